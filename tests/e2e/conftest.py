"""Real servers on loopback: gunicorn (or flask run) processes, real HTTP, real databases.

``live_server(...)`` migrates a fresh database with the real CLI, starts the production
entry point (``gunicorn -c gunicorn.conf.py wsgi:app``) on a free port and waits until it
answers. The database is a SQLite file unless the call asks for ``database="postgres"``:
then it is a new database on the server of ``TEST_POSTGRES_URL`` (dropped afterwards), and
the test skips when that variable is not set.
"""

import pytest

from support import LiveServer, drop_postgres_database, fresh_postgres_database, postgres_server_url


@pytest.fixture
def live_server(tmp_path):
    """Factory: ``live_server(env={...}, workers=2, database="postgres")`` -> a started LiveServer (stopped after)."""
    servers = []
    databases = []

    def start(env=None, workers=1, migrate=True, start=True, model_source=None, database="sqlite", wait_for="/ready"):
        if database == "postgres":
            server_url = postgres_server_url()  # skips the test without TEST_POSTGRES_URL
            database_url = fresh_postgres_database(server_url, prefix="digit_e2e")
            databases.append((server_url, database_url))
        elif database == "sqlite":
            database_url = None  # LiveServer's own SQLite file
        else:
            raise ValueError(f"unknown test database {database!r}; use 'sqlite' or 'postgres'")
        server = LiveServer(tmp_path / f"deploy{len(servers)}", database_url=database_url,
                            env={"WEB_CONCURRENCY": str(workers), **(env or {})}, model_source=model_source)
        server.workdir.mkdir(exist_ok=True)
        servers.append(server)
        if migrate:
            server.cli("db", "upgrade")
        if start:
            server.start(wait_for=wait_for)
        return server

    yield start
    for server in servers:
        server.stop()
    for server_url, database_url in databases:
        drop_postgres_database(server_url, database_url)
