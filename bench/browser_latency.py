"""How long a drawing waits for its answer in a real browser, beside the bare API call.

    python bench/browser_latency.py [--draws 30] [--warmup 2]

Deploys the service (gunicorn, 1 worker x 4 threads, fresh SQLite, the shipped model) on
loopback, signs in on ``/`` in Debian's headless Chromium (Playwright), and draws a "1"
and a "7" in turns with mouse pointer events. Each round, interleaved:

- page: the page's own measure, from the pointerup event's timestamp to the DOM holding
  the answer (canvas export, multipart POST, JSON, ten bars and the history row);
- driver: from the driver's pointerup to it seeing the answer (adds the CDP round trips);
- bare API: the same canvas PNG posted to ``/api/v2/predict`` from Python (requests, one
  kept-alive connection), i.e. the server's share.

Prints median and 90th percentile of each, and page / bare API. Needs /usr/bin/chromium.
"""

import argparse
import base64
import statistics
import sys
import tempfile
import time

import requests

import _paths  # noqa: F401  (sets up imports first)

from browser_support import ONE, SEVEN, draw_with_mouse, launch  # noqa: E402
from support import LiveServer  # noqa: E402

PASSWORD = "bench-password-1"


def quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2, help="first draws left out (first request, caches)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as workdir:
        server = LiveServer(workdir)
        server.cli("db", "upgrade")
        server.start()
        try:
            headers = server.register("bench", PASSWORD)
            http = requests.Session()
            page_ms, driver_ms, bare_ms = [], [], []
            with sync_playwright() as playwright:
                browser = launch(playwright)
                version = browser.version
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.set_default_timeout(60_000)
                page.goto(server.url + "/")
                page.fill("#username", "bench")
                page.fill("#password", PASSWORD)
                page.click("#sign-in")
                page.wait_for_selector("#workspace:not([hidden])")
                for i in range(args.warmup + args.draws):
                    shape, digit = (ONE, 1) if i % 2 == 0 else (SEVEN, 7)
                    result = draw_with_mouse(page, shape)
                    if result["digit"] != digit:
                        print(f"draw {i}: the model read {result['digit']}, not {digit}", file=sys.stderr)
                    png = base64.b64decode(page.evaluate(
                        "() => document.getElementById('pad').toDataURL('image/png')").split(",", 1)[1])
                    started = time.perf_counter()
                    response = http.post(server.url + "/api/v2/predict", headers=headers, timeout=60,
                                         files={"file": ("drawing.png", png, "image/png")})
                    elapsed = 1000 * (time.perf_counter() - started)
                    response.raise_for_status()
                    if i < args.warmup:
                        continue
                    page_ms.append(result["elapsed_ms"])
                    driver_ms.append(result["seen_ms"])
                    bare_ms.append(elapsed)
                browser.close()
        finally:
            server.stop()

    print(f"{args.draws} draws (after {args.warmup} left out), Chromium {version}, 1 gunicorn worker x 4 threads")
    print(f"{'measure':<44} {'median ms':>10} {'p90 ms':>8}")
    for name, values in [("page: pointerup -> answer in the DOM", page_ms),
                         ("driver: pointerup -> answer seen", driver_ms),
                         ("bare API: same PNG from Python", bare_ms)]:
        print(f"{name:<44} {statistics.median(values):>10.1f} {quantile(values, 0.9):>8.1f}")
    print(f"page / bare API (medians): {statistics.median(page_ms) / statistics.median(bare_ms):.2f}x")


if __name__ == "__main__":
    main()
