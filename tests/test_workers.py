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
        from tinygrad import helpers
        device = resolve_device("cpu")
        opened = helpers._db_connection  # the device's set-up used tinygrad's kernel cache
        start_compile_workers(device)
        pool = worker.worker_pool
        reopened = helpers._db_connection is None or helpers._db_connection is not opened
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
            "reopened": reopened and opened is not None,
        }))
        """,
        cache,
    )
    assert result["method"] == "fork"
    # 2x+1 summed over 0.5 .. 7.5, and 7.5 - 3, as numpy gives them
    assert result["values"] == [sum(2 * (v + 0.5) + 1 for v in range(8)), 7.5 - 3]
    assert result["alive"] == [False, False] and result["pool"]
    # the workers wrote the binaries they compiled into tinygrad's cache, each through a
    # connection of its own
    assert result["new binaries"] == 2
    # and this process closed its own before the fork, to open it again when it next needs it
    assert result["reopened"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_workers_are_forked_after_weights_came_from_numpy(tmp_path):
    """eval and predict load a checkpoint's weights from numpy arrays, which opens tinygrad's NPY
    device: the workers are still forked (spawned ones made `predict | head -1` print warnings
    about leaked semaphores, now and then, as the process exited)."""
    result = _python(
        """
        from tinygrad import Device
        device = resolve_device("cpu")
        Tensor(np.ones(4, dtype=np.float32), device=device).realize()
        opened = sorted(Device._opened_devices)
        start_compile_workers(device)
        method = worker.worker_pool._ctx.get_start_method()
        values = two_kernels(1.0)
        stop_compile_workers()
        print(json.dumps({"opened": opened, "method": method, "values": values}))
        """,
        tmp_path / "cache.db",
    )
    assert "NPY" in result["opened"]
    assert result["method"] == "fork" and result["values"] == [sum(2 * (v + 1) + 1 for v in range(8)), 5.0]


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


class _SerialPool:
    """Stands in for tinygrad's worker pool: compiles in this process, in order."""

    def imap_unordered(self, function, tasks):
        return map(function, tasks)


def _two_new_kernels(scale: float) -> list[float]:
    import numpy as np
    from tinygrad import Tensor

    a = Tensor(np.arange(4, dtype=np.float32))
    total, peak = (a * scale).sum(), (a + scale).max()
    Tensor.realize(total, peak)
    return [total.item(), peak.item()]


def test_while_compiling_calls_back_once_as_kernels_compile_in_workers(monkeypatch):
    from tinygrad.engine import realize

    from spiralctl.kernels.workers import while_compiling

    monkeypatch.setattr(realize, "get_worker_pool", lambda: _SerialPool())
    calls = []
    with while_compiling(lambda: calls.append(1)):
        assert _two_new_kernels(17.25) == [103.5, 20.25]
        assert calls == [1]
        assert _two_new_kernels(17.25) == [103.5, 20.25]  # compiled already: nothing to wait for
        assert _two_new_kernels(-2.5) == [-15.0, 0.5]  # compiles again: called once only
        assert calls == [1]
    assert isinstance(realize.get_worker_pool(), _SerialPool)  # put back

    with while_compiling(lambda: calls.append(2)) as hook:
        hook.done()  # say, training started with every kernel cached
        assert _two_new_kernels(3.5) == [21.0, 6.5]
    assert calls == [1]

    def fails():
        raise RuntimeError("can't start new thread")

    with pytest.raises(KeyError), while_compiling(fails):  # the callback's error is not the compile's
        assert _two_new_kernels(5.5) == [33.0, 8.5]
        raise KeyError("the block's own error")
    assert isinstance(realize.get_worker_pool(), _SerialPool)  # put back after an error too


def test_while_compiling_waits_for_workers_only(monkeypatch):
    from tinygrad.engine import realize

    from spiralctl.kernels.workers import while_compiling

    monkeypatch.setattr(realize, "get_worker_pool", lambda: None)  # PARALLEL=0: compiled here
    calls = []
    with while_compiling(lambda: calls.append(1)):
        assert _two_new_kernels(9.25) == [55.5, 12.25]
    assert calls == []


def test_workers_tinygrad_terminates_after_a_ctrl_c_are_killed_and_the_process_exits(tmp_path):
    # tinygrad's own answer to a Ctrl-C during a compile is to terminate its pool; ours ignore
    # SIGTERM, and once waited forever at exit
    result = _python(
        """
        from tinygrad.engine import realize
        start_compile_workers(resolve_device("cpu"))
        processes = list(worker.worker_pool._pool)
        realize.terminate_worker_pool()
        stop_compile_workers()
        print(json.dumps({"alive": [p.is_alive() for p in processes], "pool": worker.worker_pool}))
        """,
        tmp_path / "cache.db",
    )
    assert result == {"alive": [False, False], "pool": None}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_a_forked_worker_that_dies_is_not_forked_again(tmp_path):
    # (its queue lock may have died with it, so the pool may be of no further use: a fork from the
    # pool's thread while others run could deadlock the new worker as well)
    result = _python(
        """
        import os, signal, time
        start_compile_workers(resolve_device("cpu"))
        pool = worker.worker_pool
        first = pool._pool[0]
        os.kill(first.pid, signal.SIGKILL)
        first.join()
        # the pool's thread looks at its workers every 0.1 s; a slow machine gets 30 s to get there
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and first in pool._pool:
            time.sleep(0.05)
        methods = [p._popen.method if hasattr(p, "_popen") else type(p).__name__ for p in pool._pool]
        stop_compile_workers()
        print(json.dumps({"methods": methods, "alive": [p.is_alive() for p in pool._pool]}))
        """,
        tmp_path / "cache.db",
    )
    assert sorted(result["methods"]) == ["_Gone", "fork"]
    assert result["alive"] == [False, False]


# A Ctrl-C sent as the pool is made, and the window held open for 0.2 s. Python installs its
# KeyboardInterrupt handler only where the process was not started ignoring SIGINT, and a test's
# subprocess inherits that from whatever started pytest (a background job of a script, nohup and
# some CI runners start it ignored): the script sets the handler itself, as a terminal's
# foreground process has it. (Without that line this test failed wherever pytest was started so.)
CTRL_C_AS_THE_POOL_IS_MADE = """
import ctypes, signal, sys, time
from spiralctl.kernels import workers
signal.signal(signal.SIGINT, signal.default_int_handler if sys.argv[1] == "default" else signal.SIG_IGN)
where, method = sys.argv[2], sys.argv[3]
if method == "spawn":  # another thread runs: the workers are spawned, and it can take the signal
    waiting = threading.Event()
    threading.Thread(target=waiting.wait, daemon=True).start()
elif where == "before":  # a native thread, which the forked path allows (OpenBLAS starts one on
    # 2 cores or more, and stops it as the first worker forks): it can take the signal too
    libc, thread = ctypes.CDLL(None), ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(thread), None, libc.sleep, ctypes.c_void_p(60)) == 0
device = resolve_device("cpu")
made = workers._fork_pool if method == "fork" else worker._WorkerContext.Pool

def interrupted_while_made(*args):
    if where == "before":
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
    pool = made(*args)
    if where == "after":
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, right now
        time.sleep(0.2)
    elif where == "group":  # a terminal's Ctrl-C: to the workers too, as they import tinygrad
        os.killpg(0, signal.SIGINT)
        time.sleep(1.0)
    return pool

if method == "fork":
    workers._fork_pool = interrupted_while_made
else:
    worker._WorkerContext.Pool = interrupted_while_made
try:
    start_compile_workers(device)
    interrupted = False
except KeyboardInterrupt:
    interrupted = True
pool = worker.worker_pool
print(json.dumps({
    "interrupted": interrupted,
    "method": pool._ctx.get_start_method(),
    "pids": [p.pid for p in pool._pool],
    "alive": [p.is_alive() for p in pool._pool],
    "ignored": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
}))
"""


def _ctrl_c_as_the_pool_is_made(tmp_path, sigint: str, where: str, method: str) -> dict:
    env = {**os.environ, "CACHEDB": str(tmp_path / "cache.db"), "PARALLEL": "2", "DEV": "CPU"}
    code = textwrap.dedent(PROLOGUE) + CTRL_C_AS_THE_POOL_IS_MADE
    done = subprocess.run(
        [sys.executable, "-c", code, sigint, where, method],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        start_new_session=True,  # a process group of its own, for "group"
    )
    assert done.returncode == 0, done.stderr
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
@pytest.mark.parametrize(
    "where, method",
    [("after", "fork"), ("before", "fork"), ("after", "spawn"), ("group", "spawn")],
    ids=["forked", "before-fork", "spawned", "spawned-group"],
)
def test_a_ctrl_c_as_the_workers_start_leaves_them_ready_to_be_killed(tmp_path, where, method):
    """A Ctrl-C that arrives while the pool is made is held back until the pool is set up: its
    KeyboardInterrupt leaves a pool that the process kills at exit (it used to keep
    multiprocessing's finalizer, which joined the workers forever). Nor is it lost: the workers
    were once made with SIGINT ignored by the whole process, and a thread that did not block it
    (the one that makes them spawned; a native one, such as OpenBLAS's, before the first fork)
    took it and dropped it, every time. Spawned workers that the Ctrl-C reaches as well, still
    importing tinygrad, hold it back (they start with it blocked) and live on without a word."""
    result = _ctrl_c_as_the_pool_is_made(tmp_path, "default", where, method)
    assert result["method"] == method
    assert result["interrupted"] and len(result["pids"]) == 2
    assert result["alive"] == [True, True] and result["stderr"] == ""
    for pid in result["pids"]:  # killed and reaped at the process's exit
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_a_ctrl_c_the_process_was_started_ignoring_stays_ignored(tmp_path):
    """`nohup spiralctl train &` and the like: a Ctrl-C as the pool is made stops nothing."""
    result = _ctrl_c_as_the_pool_is_made(tmp_path, "ignored", "after", "fork")
    assert not result["interrupted"] and result["ignored"] and len(result["pids"]) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_a_worker_whose_parent_is_already_gone_ends():
    """A worker starting after its parent died (a SIGTERM just after the fork) would never get
    the parent-death signal: it ends itself rather than waiting for work forever."""
    code = "from spiralctl.kernels.workers import _init_worker\n_init_worker(parent=1)\nprint('went on')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "", done.stderr
