"""gunicorn settings for production: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Each worker loads its own model (the ONNX file, into ONNX Runtime) after the fork, then a
watcher thread keeps it in step with the active version in the database.
"""

import glob
import json
import os
import tempfile

from gunicorn import util

bind = os.environ.get("GUNICORN_BIND", f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# Retraining with RETRAIN_BACKEND=thread runs inside a worker: never recycle workers on a
# request count, and give slow model loads room before the arbiter gives up on a worker.
preload_app = False
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
# "-" is stdout; an empty value turns the access log off (gunicorn refuses "" as a path).
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None

# Split the cores between workers so inference (and a thread-backend retrain's TensorFlow)
# does not oversubscribe the machine.
os.environ.setdefault("INFERENCE_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
os.environ.setdefault("TF_INTRA_OP_THREADS", os.environ["INFERENCE_THREADS"])
os.environ.setdefault("TF_INTER_OP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Prometheus multiprocess mode: each worker writes its samples to files in this folder and
# a scrape of /metrics, answered by any worker, adds them all up. It must be in the
# environment before a worker imports prometheus_client. An RQ retrain worker on this host
# joins in when it is started with the same PROMETHEUS_MULTIPROC_DIR.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="digit-service-metrics-")
# With LOG_FORMAT=json the app writes its own request lines (as JSON); gunicorn's text
# access log would interleave with them.
if os.environ.get("LOG_FORMAT") == "json" and "GUNICORN_ACCESSLOG" not in os.environ:
    accesslog = None


def _json_error(sock, status_int, reason, mesg):
    """gunicorn's own refusals, before the app sees a request (request line over 4094 bytes,
    a header over 8190, malformed HTTP), in the API's JSON error shape, not an HTML page."""
    code = reason.lower().replace(" ", "_").replace("'", "")
    body = json.dumps({"error": {"code": code, "message": mesg or reason}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = _json_error  # gunicorn's workers look it up on the module at each error


def on_starting(server):
    """Start counting from zero: files of an earlier run would be added to this one's."""
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def child_exit(server, worker):
    """A dead worker's live gauges (the model it served) must leave the scrape with it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Load and warm the active model before this worker takes its first request."""
    from app.lifecycle import on_worker_start

    on_worker_start(worker.wsgi)
