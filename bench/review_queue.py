"""What a page of the admin review queue costs as the tables grow, with and without an index.

    python bench/review_queue.py [--sizes 20000 200000] [--repeats 15]

For each size, a SQLite database migrated with the real migrations gets that many
predictions (four in five of the live version, spread over 30 days, random confidences)
and a quarter as many feedback rows (one in three quarantined). Each queue's first page of
100 (what ``GET /admin/review`` runs: the count and the page) is timed ``--repeats`` times
as the service computes it, then again, alternating, on a copy of the database that has an
index on ``predictions (model_version, created_at)``. Printed: the median per queue and
setting, and the ratio. The index is not shipped: it would cost every prediction insert
(the hot path) to speed up an admin page.
"""

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from datetime import timedelta

from _paths import ROOT  # noqa: F401,E402  (sets up imports first)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from conftest import migrate_keeping_log_handlers  # noqa: E402

from app import create_app  # noqa: E402
from app.entities import Feedback, Prediction, StoredImage, utcnow  # noqa: E402
from app.extensions import db  # noqa: E402

INDEX = "CREATE INDEX ix_bench_predictions_version_created ON predictions (model_version, created_at)"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000], help="predictions per database")
    parser.add_argument("--repeats", type=int, default=15, help="timed pages per queue and setting")
    return parser.parse_args()


def build_app(path):
    return create_app("testing", test_config={"SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}", "MODEL_PRELOAD": False,
                                              "MODEL_WATCH": False, "SERVER_NAME": "localhost"})


def fill(app, size):
    rng = random.Random(0)
    with app.app_context():
        from app.services.model_versions import ensure_active_version

        live = ensure_active_version().version
        digest = "0" * 64
        db.session.execute(StoredImage.__table__.insert(), [{"sha256": digest, "content_type": "image/png", "size": 1,
                                                             "data": b"x"}])
        now = utcnow()
        db.session.execute(Prediction.__table__.insert(), [
            {"user_id": None, "image_sha256": digest, "predicted": 1, "confidence": rng.random(),
             "probabilities": [0.1] * 10, "model_version": live if i % 5 else "older", "api_version": "v2",
             "created_at": now - timedelta(days=30 * rng.random())} for i in range(size)])
        db.session.execute(Feedback.__table__.insert(), [
            {"prediction_id": i, "user_id": None, "image_sha256": digest, "label": 1, "created_at": now,
             "updated_at": now, "status": "quarantined" if i % 3 == 0 else "accepted"} for i in range(1, size // 4)])
        db.session.commit()


def time_page(app, queue):
    from app.services import review

    with app.test_request_context():
        started = time.perf_counter()
        review.queue(queue, 1, 100)
        elapsed = time.perf_counter() - started
        db.session.remove()
    return elapsed


def main():
    args = parse_args()
    folder = tempfile.mkdtemp(prefix="bench-review-")
    try:
        print(f"{'predictions':>11}  {'queue':<11}  {'no index (ms)':>13}  {'index (ms)':>10}  {'ratio':>5}")
        for size in args.sizes:
            plain_path, indexed_path = f"{folder}/plain{size}.sqlite3", f"{folder}/indexed{size}.sqlite3"
            plain = build_app(plain_path)
            migrate_keeping_log_handlers(plain)
            fill(plain, size)
            with plain.app_context():
                db.engine.dispose()
            shutil.copy(plain_path, indexed_path)
            indexed = build_app(indexed_path)
            with indexed.app_context():
                db.session.execute(db.text(INDEX))
                db.session.commit()
            for app in (plain, indexed):
                with app.app_context():
                    db.session.execute(db.text("ANALYZE"))
                    db.session.commit()
            for queue in ("quarantined", "uncertain"):
                times = {plain: [], indexed: []}
                for app in (plain, indexed):
                    time_page(app, queue)  # warm-up: the first query also reads the pages from disk
                for repeat in range(args.repeats):
                    order = (plain, indexed) if repeat % 2 == 0 else (indexed, plain)  # alternate: same machine load
                    for app in order:
                        times[app].append(time_page(app, queue))
                a, b = (statistics.median(times[app]) * 1000 for app in (plain, indexed))
                print(f"{size:>11}  {queue:<11}  {a:>13.1f}  {b:>10.1f}  {a / b:>5.2f}")
            for app in (plain, indexed):
                with app.app_context():
                    db.engine.dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
