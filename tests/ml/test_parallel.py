"""Batch preprocessing in worker processes: same results and refusals as in one thread."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.ml.parallel import PreprocessPool, _chunks
from app.ml.preprocessing import NoDigitFound, NotAnImage, preprocess_many

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "mnist50"


@pytest.fixture(scope="module")
def uploads():
    return [p.read_bytes() for p in sorted(FIXTURES.iterdir()) if p.suffix in (".png", ".jpg")][:24]


@pytest.fixture(scope="module")
def pool():
    pool = PreprocessPool(2, min_batch=4)
    pool.start()
    yield pool
    pool.shutdown()


def blank_png():
    buffer = io.BytesIO()
    Image.new("L", (60, 60), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def test_chunks_cover_the_batch_in_order():
    assert _chunks(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert _chunks(2, 4) == [(0, 1), (1, 2)]
    assert _chunks(0, 2) == []


def test_processes_give_exactly_the_serial_result(pool, uploads):
    assert np.array_equal(pool.preprocess_many(uploads), preprocess_many(uploads))
    assert pool._executor is not None  # it really went through the processes


def test_the_first_refused_item_is_reported_with_its_batch_index(pool, uploads):
    items = list(uploads)
    items[17] = blank_png()
    items[21] = b"not an image"
    with pytest.raises(NoDigitFound) as info:
        pool.preprocess_many(items)
    assert info.value.index == 17 and str(info.value) == str(NoDigitFound())
    items[3] = b"not an image either"
    with pytest.raises(NotAnImage) as info:
        pool.preprocess_many(items)
    assert info.value.index == 3


def test_small_batches_and_a_disabled_pool_stay_in_this_process(uploads):
    disabled = PreprocessPool(1)
    assert not disabled.enabled
    assert np.array_equal(disabled.preprocess_many(uploads[:6]), preprocess_many(uploads[:6]))
    small = PreprocessPool(2, min_batch=8)
    small.preprocess_many(uploads[:7])
    assert small._executor is None
    disabled.start()  # nothing to start
    assert disabled._executor is None


def test_a_killed_worker_process_costs_no_batch(uploads):
    pool = PreprocessPool(2, min_batch=4)
    try:
        pool.start()
        executor = pool._executor
        victim = next(iter(executor._processes.values()))
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(10)
        deadline = time.monotonic() + 10
        while not executor._broken and time.monotonic() < deadline:  # the executor notices at once
            time.sleep(0.01)
        # The broken pool is noticed, this batch is done here, and the next one gets fresh processes.
        assert np.array_equal(pool.preprocess_many(uploads[:8]), preprocess_many(uploads[:8]))
        assert pool._executor is None
        assert np.array_equal(pool.preprocess_many(uploads[:8]), preprocess_many(uploads[:8]))
        assert pool._executor is not None and pool._executor is not executor
    finally:
        pool.shutdown()


def test_a_pool_that_cannot_start_falls_back_to_this_process(uploads, monkeypatch):
    import multiprocessing

    def broken_context(_method):
        raise OSError("no processes here")

    pool = PreprocessPool(2, min_batch=4)
    monkeypatch.setattr(multiprocessing, "get_context", broken_context)
    # A batch still gets its answer, from this process.
    assert np.array_equal(pool.preprocess_many(uploads[:8]), preprocess_many(uploads[:8]))
    pool.start()  # cannot start: gives up on processes for good
    assert not pool.enabled
    assert np.array_equal(pool.preprocess_many(uploads[:8]), preprocess_many(uploads[:8]))


def test_helper_processes_exit_when_their_parent_is_killed(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "serve.py"
    script.write_text(
        "import sys, time\n"
        "from app.ml.parallel import PreprocessPool\n"
        "if __name__ == '__main__':\n"
        "    pool = PreprocessPool(2)\n"
        "    pool.start()\n"
        "    print(' '.join(str(pid) for pid in pool._executor._processes), flush=True)\n"
        "    time.sleep(120)\n"
    )
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, str(script)], cwd=root, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        helpers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(helpers) == 2
    finally:
        parent.kill()  # no clean-up at all, as with SIGKILL or an OOM kill
        parent.wait(10)

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if alive(pid)]
