"""The per-request token check before and after it also asked "is the account active?",
side by side in one run.

    .venv/bin/python bench/token_check.py                    # both parts
    .venv/bin/python bench/token_check.py --skip-http        # the statements only
    .venv/bin/python bench/token_check.py --postgres-url postgresql://postgres@127.0.0.1:5432/postgres

1. The statements, as ``app/security.py`` runs them through the app's session, on a
   migrated SQLite database (and a PostgreSQL one with ``--postgres-url``) holding
   ``--users`` accounts and ``--revocations`` revoked tokens: before, the jti lookup alone;
   after, ``security.TOKEN_STANDING`` (the caller's row by primary key with an EXISTS on the
   jti). Called in turns, ``--calls`` each, for random callers and random (not revoked) jtis.
2. v2 predict over HTTP, one request at a time, alternating between two LiveServers (1
   gunicorn worker each, SQLite databases filled as above): ``--before`` (a git revision of
   this repository, extracted with ``git archive`` into a temporary folder that uses this
   checkout's ``.venv``) and this checkout.

Prints medians and p95s and the after/before ratios.
"""

import argparse
import random
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import requests

from _paths import ROOT  # noqa: E402  (sets up imports first)
from support import FIXTURES, LiveServer, drop_postgres_database, fresh_postgres_database  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--revocations", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=20_000, help="statement calls of each kind")
    parser.add_argument("--requests", type=int, default=300, help="v2 predictions of each server")
    parser.add_argument("--before", default="2b25d05", help="git revision without the change")
    parser.add_argument("--postgres-url", default=None, help="also measure the statements on PostgreSQL")
    parser.add_argument("--skip-http", action="store_true")
    return parser.parse_args()


def fill(execute, users, revocations):
    """``users`` accounts (a tenth inactive) and ``revocations`` unexpired revoked tokens."""
    expires = datetime.utcnow() + timedelta(days=1)
    execute("INSERT INTO users (username, password_hash, role, active, created_at) VALUES (%s)",
            [(f"bench-{i}", "x", "user", i % 10 != 0, datetime.utcnow()) for i in range(users)])
    execute("INSERT INTO revoked_tokens (jti, token_type, user_id, revoked_at, expires_at) VALUES (%s)",
            [(str(uuid.uuid4()), "access", 1 + i % users, datetime.utcnow(), expires) for i in range(revocations)])


def fill_sqlite(path, users, revocations):
    with sqlite3.connect(path) as conn:
        fill(lambda sql, rows: conn.executemany(sql % ", ".join("?" * len(rows[0])), rows), users, revocations)


def stats(samples_ms):
    ordered = sorted(samples_ms)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


def measure_statements(database_uri, folder, args):
    from sqlalchemy import bindparam, select

    from app import create_app
    from app.entities import RevokedToken
    from app.extensions import db
    from app.security import TOKEN_STANDING

    table = RevokedToken.__table__
    before = select(table.c.id).where(table.c.jti == bindparam("jti"))  # the check as it was
    model_dir = Path(folder) / f"models-{uuid.uuid4().hex[:6]}"
    shutil.copytree(ROOT / "models", model_dir, ignore=shutil.ignore_patterns("retrain-*", "*.tmp.*"))
    app = create_app("testing", test_config={"SQLALCHEMY_DATABASE_URI": database_uri, "MODEL_DIR": str(model_dir),
                                             "MODEL_WATCH": False, "MODEL_PRELOAD": False})
    rng = random.Random(0)
    times = {"before": [], "after": []}
    with app.app_context():
        for i in range(2 * args.calls + 200):
            jti, user_id = str(uuid.uuid4()), rng.randint(1, args.users)
            kind = ("before", "after")[i % 2]
            started = time.perf_counter()
            if kind == "before":
                db.session.execute(before, {"jti": jti}).first()
            else:
                db.session.execute(TOKEN_STANDING, {"user_id": user_id, "jti": jti}).first()
            elapsed = (time.perf_counter() - started) * 1e6
            db.session.rollback()  # each request ends its transaction
            if i >= 200:  # warm-up
                times[kind].append(elapsed)
    return times


def migrated_sqlite(folder, args):
    path = Path(folder) / "bench.sqlite3"
    server = LiveServer(Path(folder) / "deploy", database_url=f"sqlite:///{path}")
    server.workdir.mkdir(parents=True, exist_ok=True)
    server.cli("db", "upgrade")
    fill_sqlite(path, args.users, args.revocations)
    return f"sqlite:///{path}"


def migrated_postgres(folder, args):
    import psycopg

    url = fresh_postgres_database(args.postgres_url, prefix="bench_tokens")
    server = LiveServer(Path(folder) / "pg-deploy", database_url=url)
    server.workdir.mkdir(parents=True, exist_ok=True)
    server.cli("db", "upgrade")
    with psycopg.connect(url) as conn:
        with conn.cursor() as cursor:
            fill(lambda sql, rows: cursor.executemany(sql % ", ".join(["%s"] * len(rows[0])), rows),
                 args.users, args.revocations)
        conn.execute("ANALYZE")
    return url


def report(title, unit, times):
    b_med, b_p95 = stats(times["before"])
    a_med, a_p95 = stats(times["after"])
    print(f"{title}: before median {b_med:.1f} {unit} p95 {b_p95:.1f} | after median {a_med:.1f} {unit} "
          f"p95 {a_p95:.1f} | after/before median {a_med / b_med:.2f}x, p95 {a_p95 / b_p95:.2f}x "
          f"({len(times['before'])} each)")


def before_checkout(revision, folder):
    target = Path(folder) / "before-checkout"
    target.mkdir()
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    (target / ".venv").symlink_to((ROOT / ".venv").resolve())
    return target


def measure_http(folder, args):
    servers = {}
    try:
        for name, repo in (("before", before_checkout(args.before, folder)), ("after", ROOT)):
            server = LiveServer(Path(folder) / name, repo=repo, model_source=ROOT / "models")
            server.workdir.mkdir(exist_ok=True)
            server.cli("db", "upgrade")
            fill_sqlite(server.workdir / "live.sqlite3", args.users, args.revocations)
            servers[name] = server.start()
        upload = (FIXTURES / "mnist50" / "00000.png").read_bytes()
        sessions = {}
        for name, server in servers.items():
            headers = server.register("bench-caller", "bench-password-1")
            session = requests.Session()
            session.headers.update(headers)
            sessions[name] = (server, session)
        times = {"before": [], "after": []}
        for i in range(2 * args.requests + 40):
            name = ("before", "after")[i % 2]
            server, session = sessions[name]
            started = time.perf_counter()
            response = session.post(server.url + "/api/v2/predict", files={"file": ("d.png", upload, "image/png")},
                                    timeout=60)
            elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
            if i >= 40:
                times[name].append(elapsed)
        return times
    finally:
        for server in servers.values():
            server.stop()


def main():
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-token-check-") as folder:
        print(f"{args.users} users, {args.revocations} revoked tokens")
        report("statement, SQLite", "us", measure_statements(migrated_sqlite(folder, args), folder, args))
        if args.postgres_url:
            url = migrated_postgres(folder, args)
            try:
                report("statement, PostgreSQL", "us", measure_statements(url, folder, args))
            finally:
                drop_postgres_database(args.postgres_url, url)
        if not args.skip_http:
            report(f"v2 predict over HTTP (before = {args.before})", "ms", measure_http(folder, args))


if __name__ == "__main__":
    main()
