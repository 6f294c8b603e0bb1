"""The service holds to its own /openapi.json under schemathesis, over real HTTP.

A production-config gunicorn on loopback; schemathesis (pinned in requirements.txt) runs
its examples, coverage, fuzzing and stateful phases with every check, configured by
``tests/e2e/schemathesis.toml``: once logged in as a user, once as an admin. The whole
document is fuzzed, so an endpoint added to it is covered with no change here. As the user,
a second, stateful-only run over register, login, predict and feedback must follow the
links between them (the whole-document stateful phase wanders and may not).

How the server is set up for it, and why:
- rate limits on, with every limit out of reach: the limiter runs on each request (its
  headers, its keys) without 429s cutting the run short (other tests run into the limits);
- ``BCRYPT_LOG_ROUNDS=4``: the fuzzer logs in again after each logout it fuzzes, and
  registers accounts; at the production cost of 12 those logins were most of the run;
- ``METRICS_TOKEN`` set, and given to schemathesis, so /metrics is scraped, not only refused.

``FUZZ_SEED`` picks another seed (the default keeps CI runs comparable).
"""

import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest
import requests

from support import BIN

pytestmark = pytest.mark.e2e

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = os.environ.get("FUZZ_SEED", "20261130")
OUT_OF_REACH = "100000 per hour"
FUZZ_ENV = {
    "RATELIMIT_ENABLED": "true",
    **{name: OUT_OF_REACH for name in ("RATELIMIT_DEFAULT", "RATELIMIT_LOGIN", "RATELIMIT_REGISTER",
                                       "RATELIMIT_V1_PREDICT", "RATELIMIT_V2_PREDICT")},
    "BCRYPT_LOG_ROUNDS": "4",
}


def run_schemathesis(server, username, password, metrics_token, workdir, *options):
    """schemathesis against ``server`` as ``username``; returns its exit status, output and event log."""
    workdir.mkdir()  # it writes .schemathesis/ where it runs
    env = {**os.environ, "FUZZ_USERNAME": username, "FUZZ_PASSWORD": password, "FUZZ_METRICS_TOKEN": metrics_token}
    result = subprocess.run(
        [str(BIN / "schemathesis"), "--config-file", str(CONFIG), "run", server.url + "/openapi.json",
         "--seed", SEED, "--no-color", "--report", "ndjson", "--report-ndjson-path", str(workdir / "events.ndjson"),
         *options],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )
    return result.returncode, result.stdout + result.stderr, workdir / "events.ndjson"


# The flow the document's links describe. The whole-document run's stateful phase wanders
# over every operation and link; a second, stateful-only run over just these operations
# must follow each of these links.
FLOW = ["/auth/register", "/auth/login", "/api/v2/predict", "/api/v2/feedback"]
CHAIN = {
    "POST /auth/register -> [201] login -> POST /auth/login",
    "POST /auth/login -> [200] predict -> POST /api/v2/predict",
    "POST /api/v2/predict -> [200] feedback -> POST /api/v2/feedback",
}


def followed_links(events):
    """Ids of the links the stateful phase followed, from schemathesis' NDJSON event log."""
    followed = set()

    def walk(node):
        if isinstance(node, dict):
            transition = node.get("transition")
            if isinstance(transition, dict) and transition.get("id"):
                followed.add(transition["id"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for line in events.read_text().splitlines():
        walk(json.loads(line))
    return followed


def summary(output):
    """The figures of schemathesis' summary: operations selected and tested, cases generated."""
    selected = re.search(r"Selected: (\d+)/(\d+)", output)
    tested = re.search(r"Tested: (\d+)", output)
    cases = re.search(r"(\d+) generated", output)
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", output)
    return {
        "operations": int(selected.group(2)) if selected else None,
        "selected": int(selected.group(1)) if selected else None,
        "tested": int(tested.group(1)) if tested else None,
        "cases": int(cases.group(1)) if cases else None,
        "links_covered": int(links.group(1)) if links else None,
        "links": int(links.group(2)) if links else None,
    }


@pytest.mark.parametrize("role", ["user", "admin"])
def test_the_api_keeps_to_its_own_openapi_document(live_server, tmp_path, role):
    metrics_token = secrets.token_urlsafe(24)
    server = live_server(env={**FUZZ_ENV, "METRICS_TOKEN": metrics_token})
    username, password = f"fuzz-{role}", secrets.token_urlsafe(16)
    if role == "admin":
        server.create_admin(username, password)
    else:
        server.register(username, password)
    operations = sum(
        method != "parameters" for item in requests.get(server.url + "/openapi.json", timeout=10).json()["paths"].values()
        for method in item
    )

    status, output, _ = run_schemathesis(server, username, password, metrics_token, tmp_path / "whole")

    figures = summary(output)
    print(f"fuzz as {role}: {json.dumps(figures)}")  # the README's figures (pytest -s shows them)
    assert status == 0, output[-8000:] + "\n--- server log ---\n" + server.log()
    assert figures["operations"] == figures["selected"] == figures["tested"] == operations, output[-3000:]

    if role == "user":
        paths = [option for path in FLOW for option in ("--include-path", path)]
        status, output, events = run_schemathesis(server, username, password, metrics_token, tmp_path / "flow",
                                                  "--phases", "stateful", "--max-examples", "30", *paths)
        print(f"flow as {role}: {json.dumps(summary(output))}")
        assert status == 0, output[-8000:] + "\n--- server log ---\n" + server.log()
        assert CHAIN <= followed_links(events), output[-3000:]
