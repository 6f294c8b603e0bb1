"""Driving the pages in Debian's Chromium with Playwright: shared by the browser tests
(tests/e2e/test_browser.py) and bench/browser_latency.py."""

import time

CHROMIUM = "/usr/bin/chromium"
# The machine has no internet: keep Chromium from trying to reach it.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-default-apps", "--no-first-run", "--disable-dev-shm-usage"]

# Strokes in fractions of the canvas: a clear "1" and a clear "7".
ONE = [[(0.50, 0.18), (0.50, 0.82)]]
SEVEN = [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.84)]]


def launch(playwright):
    """Debian's Chromium, headless; Playwright never downloads a browser of its own."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def pad_points(page, strokes):
    page.locator("#pad").scroll_into_view_if_needed()
    box = page.locator("#pad").bounding_box()
    return [[(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke] for stroke in strokes]


def interpolate(points, steps=12):
    """The points a hand would pass through between the corners of a stroke."""
    out = [points[0]]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        out += [(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps) for i in range(1, steps + 1)]
    return out


def current_prediction_id(page):
    return page.get_attribute("#result", "data-prediction-id")


def wait_for_new_prediction(page, before):
    page.wait_for_function(
        "before => { const id = document.getElementById('result').dataset.predictionId;"
        " return id !== undefined && id !== before; }", arg=before)
    return {"digit": int(page.text_content("#digit")), "elapsed_ms": float(page.get_attribute("#result", "data-elapsed-ms")),
            "prediction_id": int(current_prediction_id(page))}


def draw_with_mouse(page, strokes):
    """Clear the pad and draw with mouse pointer events, waiting for each stroke's answer.

    Returns the last stroke's answer, with ``seen_ms``: from the last pointerup to that
    answer on the page, as the driving process saw it (``elapsed_ms`` is the page's own
    measure, from the event's timestamp to the DOM holding the answer).
    """
    page.click("#clear")
    for stroke in pad_points(page, strokes):
        before = current_prediction_id(page)
        path = interpolate(stroke)
        page.mouse.move(*path[0])
        page.mouse.down()
        for x, y in path[1:]:
            page.mouse.move(x, y)
        page.mouse.up()
        lifted = time.perf_counter()
        result = wait_for_new_prediction(page, before)
        result["seen_ms"] = 1000 * (time.perf_counter() - lifted)
    return result


def draw_with_touch(page, strokes):
    """The same with a finger: touch events through Chromium's input pipeline (pointerType touch)."""
    page.click("#clear")
    cdp = page.context.new_cdp_session(page)
    for stroke in pad_points(page, strokes):
        before = current_prediction_id(page)
        path = interpolate(stroke)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": path[0][0], "y": path[0][1]}]})
        for x, y in path[1:]:
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        result = wait_for_new_prediction(page, before)
    cdp.detach()
    return result
