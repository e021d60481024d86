"""Compile workers (spiralctl/kernels/workers.py): forked for the CPU while spiralctl has no other
thread, spawned otherwise, and ended at once. Each case runs in a fresh Python process, which
starts with one thread as the spiralctl command does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROLOGUE = """
import json, os, sqlite3, threading
import numpy as np
from tinygrad import Tensor
from tinygrad.engine import worker
from spiralctl.devices import resolve_device
from spiralctl.kernels.workers import start_compile_workers, stop_compile_workers

def cached_binaries():
    with sqlite3.connect(os.environ["CACHEDB"]) as db:
        tables = [row[0] for row in db.execute("select name from sqlite_master where type = 'table'")]
        return sum(db.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables)

def two_kernels(offset):
    # two kernels in one schedule: tinygrad compiles them in its worker pool
    a = Tensor(np.arange(8, dtype=np.float32) + offset)
    total, peak = (a * 2 + 1).sum(), (a - 3).max()
    Tensor.realize(total, peak)
    return [total.item(), peak.item()]
"""


def _python(code: str, cache) -> dict:
    env = {**os.environ, "CACHEDB": str(cache), "PARALLEL": "2", "DEV": "CPU"}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROLOGUE) + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_cpu_workers_are_forked_compile_right_and_write_their_own_cache(tmp_path):
    cache = tmp_path / "cache.db"
    result = _python(
        """
        start_compile_workers(resolve_device("cpu"))
        pool = worker.worker_pool
        before = cached_binaries()
        values = two_kernels(0.5)
        processes = list(pool._pool)
        stop_compile_workers()
        print(json.dumps({
            "method": pool._ctx.get_start_method(),
            "values": values,
            "alive": [p.is_alive() for p in processes],
            "pool": worker.worker_pool is None,
            "new binaries": cached_binaries() - before,
        }))
        """,
        cache,
    )
    assert result["method"] == "fork"
    # 2x+1 summed over 0.5 .. 7.5, and 7.5 - 3, as numpy gives them
    x = sorted(range(8))
    assert result["values"] == [sum(2 * (v + 0.5) + 1 for v in x), 7.5 - 3]
    assert result["alive"] == [False, False] and result["pool"]
    # the workers wrote the binaries they compiled into tinygrad's cache, each through a
    # connection of its own
    assert result["new binaries"] == 2


def test_workers_are_spawned_when_another_thread_runs(tmp_path):
    result = _python(
        """
        waiting = threading.Event()
        thread = threading.Thread(target=waiting.wait)
        thread.start()
        start_compile_workers(resolve_device("cpu"))
        method = worker.worker_pool._ctx.get_start_method()
        values = two_kernels(0.0)
        waiting.set()
        thread.join()
        stop_compile_workers()
        print(json.dumps({"method": method, "values": values}))
        """,
        tmp_path / "cache.db",
    )
    assert result == {"method": "spawn", "values": [sum(2 * v + 1 for v in range(8)), 4.0]}


def test_only_cpu_kernels_fork_their_workers():
    from spiralctl.kernels.workers import _forkable

    assert not _forkable(None)
    for device in ("CUDA", "AMD", "METAL", "CL", "PYTHON"):
        assert not _forkable(device), device


def test_while_compiling_calls_back_once_as_several_kernels_compile():
    import numpy as np
    from tinygrad import Tensor
    from tinygrad.engine import realize
    from tinygrad.helpers import Context

    from spiralctl.kernels.workers import while_compiling

    def two_new_kernels(scale: float) -> list[float]:
        a = Tensor(np.arange(4, dtype=np.float32))
        total, peak = (a * scale).sum(), (a + scale).max()
        Tensor.realize(total, peak)
        return [total.item(), peak.item()]

    calls = []
    original = realize.get_worker_pool
    with Context(PARALLEL=0):  # compiled in this process, as tinygrad does without workers
        with while_compiling(lambda: calls.append(1)):
            assert two_new_kernels(17.25) == [103.5, 20.25]
            assert calls == [1]
            assert two_new_kernels(17.25) == [103.5, 20.25]  # compiled already: nothing to wait for
            assert two_new_kernels(-2.5) == [-15.0, 0.5]  # compiles again: called once only
            assert calls == [1]
        assert realize.get_worker_pool is original
        with while_compiling(lambda: calls.append(2)):
            two_new_kernels(17.25)  # all compiled: never called
        assert calls == [1]
