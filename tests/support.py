"""Helpers shared by the tests: paths, an auth helper, digit uploads, real server processes.

Kept out of ``conftest.py`` so test modules can import them by a name that cannot clash.
"""

import io
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = ROOT / "models"
SHARED_DATA = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


class AuthActions:
    """Register, log in and build headers the way a client would."""

    def __init__(self, client, app):
        self._client = client
        self._app = app

    def register(self, username="alice", password="correct-horse-1", **extra):
        return self._client.post("/auth/register", json={"username": username, "password": password, **extra})

    def login(self, username="alice", password="correct-horse-1"):
        return self._client.post("/auth/login", json={"username": username, "password": password})

    def headers(self, username="alice", password="correct-horse-1", role="user"):
        """Create the account if needed (as ``role``) and return an Authorization header."""
        with self._app.app_context():
            from app.entities import User
            from app.extensions import db
            from app.services.accounts import create_user

            if db.session.execute(db.select(User).filter_by(username=username)).scalar_one_or_none() is None:
                create_user(username, password, role=role)
        token = self.login(username, password).get_json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    def admin_headers(self):
        return self.headers("root", "admin-password-1", role="admin")


def mnist_png(digit, invert=True):
    """A 28x28 MNIST digit as a PNG upload (dark ink on white paper, as people send them)."""
    pixels = 255 - digit if invert else digit
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize((84, 84)).save(buffer, format="PNG")
    return buffer.getvalue()


BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


POSTGRES_SKIP_REASON = (
    "TEST_POSTGRES_URL is not set: give a PostgreSQL server URL whose user may CREATE DATABASE, "
    "e.g. postgresql://postgres@127.0.0.1:5432/postgres (`bash .ci/run` starts one)"
)
REDIS_SKIP_REASON = "TEST_REDIS_URL is not set: give a scratch Redis, e.g. redis://127.0.0.1:6379/0 (`bash .ci/run` starts one)"


def postgres_server_url():
    """``TEST_POSTGRES_URL``, or skip the calling test with the reason."""
    import pytest

    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.skip(POSTGRES_SKIP_REASON)
    return url


def _libpq_url(url, database=None):
    """``url`` as libpq/psycopg want it (no ``+driver``), optionally naming another database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def fresh_postgres_database(server_url, prefix="digit_test"):
    """Create a new, empty database on the server of ``server_url``; return its URL.

    ``server_url`` names a maintenance database (``postgres``) that the user may connect to
    and CREATE DATABASE from; the new one gets a random name, so runs never collide.
    """
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq_url(server_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _libpq_url(server_url, database=name)


def drop_postgres_database(server_url, database_url):
    """Drop a database made by ``fresh_postgres_database``, closing whatever still uses it."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    name = make_url(database_url).database
    with psycopg.connect(_libpq_url(server_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class LiveServer:
    """One deployment: a database, a model folder, and a server process serving them."""

    def __init__(self, workdir, *, database_url=None, env=None, model_source=None, repo=None):
        # The checkout to run and its virtualenv (benchmarks run other checkouts than this one).
        self.repo = Path(repo) if repo else ROOT
        self.bin = self.repo / ".venv" / "bin" if repo else BIN
        self.workdir = Path(workdir)
        self.model_dir = self.workdir / "models"
        if not self.model_dir.exists():
            shutil.copytree(model_source or SHIPPED_MODELS, self.model_dir,
                            ignore=shutil.ignore_patterns("retrain-*", "*.tmp.keras", "*.tmp.onnx"))
        self.database_url = database_url or f"sqlite:///{self.workdir / 'live.sqlite3'}"
        self.port = None
        self.process = None
        self.log_path = self.workdir / "server.log"
        self.env = {
            **os.environ,
            "APP_ENV": "production",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "JWT_SECRET_KEY": secrets.token_urlsafe(48),
            "DATABASE_URL": self.database_url,
            "MODEL_DIR": str(self.model_dir),
            "INSTANCE_PATH": str(self.workdir / "instance"),
            "RATELIMIT_ENABLED": "false",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "WEB_CONCURRENCY": "1",
            "GUNICORN_THREADS": "4",
            "GUNICORN_ACCESSLOG": "",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args, input=None, check=True, timeout=300):
        """Run ``flask --app wsgi ...`` against this deployment's database."""
        result = subprocess.run([str(self.bin / "flask"), "--app", "wsgi", *args], cwd=self.repo, env=self.env,
                                input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"flask {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def start(self, wait_for="/ready", timeout=120):
        self.port = free_port()
        env = {**self.env, "GUNICORN_BIND": f"127.0.0.1:{self.port}"}
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(self.bin / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=self.repo, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + wait_for, timeout=2).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or no worker has taken it
                pass
            time.sleep(0.2)
        raise AssertionError(f"server did not become ready in {timeout}s:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self):
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    # Client helpers -------------------------------------------------------------------

    def create_admin(self, name="admin", password="admin-password-1", email=None):
        args = ["create-admin", name, "--password-stdin"] + (["--email", email] if email else [])
        self.cli(*args, input=password + "\n")
        return self.token(name, password)

    def register(self, name, password="user-password-1"):
        response = requests.post(self.url + "/auth/register", json={"username": name, "password": password}, timeout=10)
        assert response.status_code == 201, response.text
        return self.token(name, password)

    def token(self, name, password):
        response = requests.post(self.url + "/auth/login", json={"username": name, "password": password}, timeout=10)
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


# Learning-loop helpers for tests against a LiveServer --------------------------------

LOOP_ENV = {
    "RETRAIN_EPOCHS": "2",
    "RETRAIN_MIN_FEEDBACK": "20",
    "RETRAIN_MAX_REGRESSION": "100",
    "MODEL_SYNC_SECONDS": "0.5",
    "SERVED_BY_HEADER": "true",
}


def feed(server, headers, replay_digits, n=24):
    x, y = replay_digits
    picked = [i for i in range(len(y)) if y[i] != 0][:n]
    for i in picked:
        response = requests.post(server.url + "/api/v2/feedback", headers=headers, timeout=30,
                                 files={"file": (f"{i}.png", mnist_png(x[i]), "image/png")}, data={"label": str(int(y[i]))})
        assert response.status_code == 201, response.text


def wait_until(condition, timeout, what):
    """Poll ``condition()`` until it is true; fail saying ``what`` did not happen in ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not {what} within {timeout}s")


FINISHED = ("succeeded", "rejected", "failed")  # a retrain job's end states


def wait_status(server, admin, job_id, statuses, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{server.url}/admin/retrain/{job_id}", headers=admin, timeout=30).json()
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} is {body['status']}, wanted {statuses}\n{server.log()}")


FRESH = {"Connection": "close"}  # one request per connection: any worker may take the next


def ask_every_worker(send, workers=2, max_requests=400):
    """Repeat ``send()`` (a few at a time) until each of ``workers`` has answered; all answers."""
    answers, seen = [], set()
    with ThreadPoolExecutor(4) as pool:
        while len(seen) < workers:
            assert len(answers) < max_requests, f"only {seen} answered {len(answers)} requests"
            burst = list(pool.map(lambda _: send(), range(4)))
            answers += burst
            seen |= {r.headers["X-Served-By"] for r in burst}
    return answers


def constant_model(digit):
    """A tiny network that always answers ``digit`` (zero kernel, bias on one class)."""
    from app.ml.network import build_model

    model = build_model(width=4)
    dense = model.get_layer("probs")
    kernel, bias = dense.get_weights()
    bias[:] = 0
    bias[digit] = 6
    dense.set_weights([np.zeros_like(kernel), bias])
    return model


# Servers a test may stop and start (faults, the soak) ------------------------------------


def _skip(reason):
    import pytest

    pytest.skip(reason)


PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def unused_port():
    """A port nothing listens on, outside the kernel's ephemeral range: a server stopped and
    started again on it must find it still free (nothing else gets it meanwhile)."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise AssertionError("no free port")


class OwnPostgres:
    """A throw-away PostgreSQL cluster on loopback that this test may stop and start."""

    def __init__(self):
        if not (PG_BIN / "initdb").exists():
            _skip(f"PostgreSQL binaries not found in {PG_BIN} (set PG_BIN)")
        self.as_postgres = os.geteuid() == 0  # PostgreSQL refuses to run as root
        self.dir = Path(tempfile.mkdtemp(prefix="digit-faults-pg-"))
        os.chmod(self.dir, 0o755)
        if self.as_postgres:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.dir)
                _skip("running as root and there is no `postgres` user to run PostgreSQL as")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.port = unused_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run("initdb", "-D", f"{self.dir}/data", "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")

    def _run(self, tool, *args):
        command = [str(PG_BIN / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, cwd="/", capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{tool} failed:\n{result.stdout}\n{result.stderr}\n{self.server_log()}"

    def server_log(self):
        path = self.dir / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start(self):
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/server.log", "-w", "-t", "60",
                  "-o", options, "start")

    def stop(self):
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "-t", "60", "stop")

    def destroy(self):
        if (self.dir / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "-w", "-t", "60", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnRedis:
    """A throw-away Redis on loopback that this test may stop and start (same port)."""

    def __init__(self, workdir):
        if not shutil.which("redis-server"):
            _skip("redis-server is not installed (`.ci/run` installs it)")
        self.workdir = workdir
        self.port = unused_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.process.poll() is None, "redis-server exited"
            time.sleep(0.1)
        raise AssertionError("redis-server did not listen within 30 s")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


