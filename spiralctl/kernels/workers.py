"""tinygrad's compile workers, started so that a signal meant for spiralctl does not break them.

tinygrad compiles kernels in a pool of worker processes that ignore SIGINT but not SIGTERM.
`timeout`, Slurm and container runtimes send SIGTERM to the whole process group: the workers
died, a compile in progress waited forever for their answer, and at exit the pool's finalizer
hung on a lock a dead worker held. Here the same pool is started with workers that ignore
SIGTERM too (spiralctl itself finishes the step, saves and exits) and that die with their
parent on Linux, and `stop_compile_workers` ends them without waiting on the pool's locks.

On Linux, for the CPU, the workers are forked from spiralctl itself when it has no other thread
yet: they start with tinygrad imported and its pattern matchers compiled (spawned ones import
and compile them again, about 0.3 s each before their first kernel), which is a fifth of a cold
seed run. Anywhere else (macOS, a GPU runtime opened in this process, a thread already running)
they are spawned, as tinygrad does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.pool
import multiprocessing.util
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1


_inherited = None  # a forked worker's copy of its parent's kernel cache connection: never used


def _init_worker() -> None:
    global _inherited
    from tinygrad import helpers
    from tinygrad.engine import worker

    worker._init_worker()
    # a SQLite connection must not be used on both sides of a fork: a forked worker opens its own
    # (the copy is kept, unused and unclosed, so that nothing of the parent's is released here)
    _inherited, helpers._db_connection = helpers._db_connection, None
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@contextmanager
def _ignored_by_new_processes(*signums: int) -> Iterator[None]:
    """Processes started inside ignore `signums` from their first instruction: an ignored signal
    stays ignored across exec, and Python then installs no handler of its own. (Without this, a
    Ctrl-C to the process group while a worker was still importing tinygrad, before
    `_init_worker` ran, printed the worker's KeyboardInterrupt traceback.) This process's own
    signals are held meanwhile and delivered after, to its own handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _forkable(device: str | None) -> bool:
    """Can the workers be forked from this process now (see the module's notes)?"""
    from spiralctl.kernels.threads import is_cpu

    return (
        sys.platform.startswith("linux")
        and device is not None
        and is_cpu(device)
        and threading.active_count() == 1
        and "fork" in multiprocessing.get_all_start_methods()
    )


def start_compile_workers(device: str | None = None) -> None:
    """Start tinygrad's worker pool (if it uses one and has none yet) with signal-proof workers,
    forked where that is safe for kernels of `device` and spawned elsewhere."""
    from tinygrad.engine import worker
    from tinygrad.helpers import PARALLEL, getenv

    if worker.worker_pool is not None or PARALLEL.value == 0 or multiprocessing.current_process().daemon:
        return
    with _ignored_by_new_processes(signal.SIGINT, signal.SIGTERM):
        if _forkable(device):
            for stream in (sys.stdout, sys.stderr):  # a child must not write out the parent's buffer
                stream.flush()
            # never replaced: a replacement would be forked while other threads run
            pool = multiprocessing.get_context("fork").Pool(PARALLEL.value, _init_worker)
        else:
            max_tasks = getenv("BEAM_MAX_TASKS_PER_CHILD", 16)
            pool = worker._WorkerContext().Pool(PARALLEL.value, _init_worker, (), max_tasks)
    # the pool's own finalizer would SIGTERM the workers, which ignore it, and wait forever: stop
    # them our way at exit instead, also in a process that multiprocessing started (a tune
    # worker), where atexit handlers do not run but these finalizers do
    pool._terminate.cancel()
    multiprocessing.util.Finalize(pool, stop_compile_workers, exitpriority=15)
    worker.worker_pool = pool


@contextmanager
def while_compiling(callback) -> Iterator[None]:
    """Inside, `callback()` runs once, as tinygrad is about to compile several kernels together:
    the time this process spends waiting for its compile workers (tinygrad asks for its worker
    pool only then), when work of its own costs the training loop nothing."""
    from tinygrad.engine import realize

    original, called = realize.get_worker_pool, False

    def get_worker_pool():
        nonlocal called
        if not called:
            called = True
            callback()
        return original()

    realize.get_worker_pool = get_worker_pool
    try:
        yield
    finally:
        realize.get_worker_pool = original


def stop_compile_workers() -> None:
    """End the workers without waiting on the pool's locks; safe to call when there are none.

    They are killed, not asked to stop: a worker told to stop runs Python's shutdown before it
    exits, and waiting for that took 0.2 s at the end of every run. Whatever a worker compiled
    is already in tinygrad's cache (SQLite, which rolls back a write cut short) or delivered."""
    from tinygrad.engine import worker

    pool, worker.worker_pool = worker.worker_pool, None
    if pool is None:
        return
    # the pool's own close() and terminate() first take a queue lock that a killed worker may hold
    pool._terminate.cancel()
    pool._state = pool._worker_handler._state = multiprocessing.pool.TERMINATE  # no replacements
    for process in pool._pool:
        if process.is_alive():
            process.kill()
    for process in pool._pool:
        process.join(timeout=5)
