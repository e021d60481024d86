"""tinygrad's compile workers, started so that a signal meant for spiralctl does not break them.

tinygrad compiles kernels in a pool of worker processes that ignore SIGINT but not SIGTERM.
`timeout`, Slurm and container runtimes send SIGTERM to the whole process group: the workers
died, a compile in progress waited forever for their answer, and at exit the pool's finalizer
hung on a lock a dead worker held. Here the same pool is started with workers that ignore
SIGTERM too (spiralctl itself finishes the step, saves and exits) and that die with their
parent on Linux, and `stop_compile_workers` ends them without waiting on the pool's locks.

On Linux, for the CPU, the workers are forked from spiralctl itself while it runs no other
Python thread and has opened no other device (but tinygrad's NPY, numpy arrays that eval and
predict load weights from): they start with tinygrad imported and its pattern
matchers compiled (spawned ones import and compile them again, about 0.3 s each before their
first kernel), which is a fifth of a cold seed run. A worker that dies is not replaced (a fork
then would happen while other threads run). Anywhere else (macOS, a
GPU, a thread already running) they are spawned, as tinygrad does. (Native threads, such as
OpenBLAS's pool, handle a fork themselves.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.pool
import multiprocessing.util
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress

PR_SET_PDEATHSIG = 1


def _init_worker(parent: int, forked: bool = False) -> None:
    from tinygrad.engine import worker

    worker._init_worker()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if forked:  # what a library caller may have set up in the parent is not the worker's
        with suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for signum in signal.valid_signals():
            with suppress(OSError, ValueError, RuntimeError):
                if callable(signal.getsignal(signum)):
                    signal.signal(signum, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # the parent died before the line above: no signal will come. (Both pools start their workers
    # from this process, forked or spawned; under multiprocessing's forkserver, which neither
    # uses, the parent would be the server)
    if os.getppid() != parent:
        os._exit(0)


class _Gone:
    """Takes a dead forked worker's place in its pool: the pool keeps it and starts no other."""

    exitcode, name, daemon = None, "", True

    def start(self) -> None: ...

    def is_alive(self) -> bool:
        return False

    def kill(self) -> None: ...

    def terminate(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


class _ForkedPool(multiprocessing.pool.Pool):
    """A pool of forked workers that replaces none that dies (a fork then would happen from the
    pool's own thread while the training loop's threads run, and a spawned worker cannot share a
    forked pool's queues): the others go on with the work (a task a dead worker held is lost, as
    in any pool)."""

    def __init__(self, processes: int) -> None:
        forks = [processes]

        def process(ctx, *args, **kwargs):
            if forks[0] > 0:
                forks[0] -= 1
                return ctx.Process(*args, **kwargs)
            return _Gone()

        self.Process = process
        fork = multiprocessing.get_context("fork")
        super().__init__(processes, _init_worker, (os.getpid(), True), context=fork)


@contextmanager
def _held_from_new_processes(*signums: int) -> Iterator[None]:
    """Processes started inside hold `signums` back from their first instruction until
    `_init_worker` ignores them (which discards one held meanwhile): they start with them blocked,
    a signal mask that fork and exec both keep. (Without this, a Ctrl-C to the process group while
    a worker was still importing tinygrad, before `_init_worker` ran, printed the worker's
    KeyboardInterrupt traceback.) This process's own signals are held meanwhile and delivered
    after, to its own handlers.

    Blocking them is not enough for this process: the mask is the calling thread's, and a signal
    sent to the process goes to any thread that does not block it (OpenBLAS's threads, until the
    first fork stops them; the other Python threads when the workers are spawned). So the handlers
    are replaced too, with one that notes the signal, which is raised again at the end. (They were
    once set to SIG_IGN instead, for the process as a whole: a Ctrl-C or a SIGTERM that such a
    thread took in between was then discarded, and the command went on as if none was sent. A
    signal this process was started ignoring stays ignored, as before.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def note(signum, frame) -> None:
        received.append(signum)

    held = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    handlers = {}
    try:
        for signum in signums:
            # SIG_IGN: ignored here, and by the workers too; None: set outside Python, left alone
            if signal.getsignal(signum) not in (signal.SIG_IGN, None):
                handlers[signum] = signal.signal(signum, note)
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):  # pending for this thread until its mask is back
            signal.raise_signal(signum)
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker now, if spawned workers will need it: started
    later, from inside `_held_from_new_processes`, it unblocks SIGINT and SIGTERM in this thread
    as it spawns (multiprocessing/resource_tracker.py), and the workers spawned after it would
    start without them blocked."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


def _forkable(device: str | None) -> bool:
    """Can the workers be forked from this process now (see the module's notes)?"""
    from tinygrad import Device

    from spiralctl.kernels.threads import is_cpu

    return (
        sys.platform.startswith("linux")
        and device is not None
        and is_cpu(device)
        and all(is_cpu(opened) or opened.split(":")[0] == "NPY" for opened in Device._opened_devices)
        and threading.active_count() == 1
        and "fork" in multiprocessing.get_all_start_methods()
    )


def _fork_pool(processes: int) -> multiprocessing.pool.Pool:
    from tinygrad import helpers

    for stream in (sys.stdout, sys.stderr):  # a child must not write out the parent's buffer
        with suppress(AttributeError, OSError, ValueError):
            stream.flush()
    # a SQLite connection must not be used on both sides of a fork: tinygrad opens its kernel
    # cache again when it next needs it, here and in each worker
    if helpers._db_connection is not None:
        helpers._db_connection.close()
        helpers._db_connection = None
    with warnings.catch_warnings():  # Python 3.12+ warns of native threads, which handle a fork
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        return _ForkedPool(processes)


def start_compile_workers(device: str | None = None) -> None:
    """Start tinygrad's worker pool (if it uses one and has none yet) with signal-proof workers,
    forked where that is safe for kernels of `device` and spawned elsewhere."""
    from tinygrad.engine import worker
    from tinygrad.helpers import PARALLEL, getenv

    if worker.worker_pool is not None or PARALLEL.value == 0 or multiprocessing.current_process().daemon:
        return
    forked = _forkable(device)
    if not forked:
        _start_resource_tracker()
    # everything up to the pool's own finalizer being replaced happens with Ctrl-C and SIGTERM
    # held back: one that arrived in between left the default finalizer, which joins the
    # workers (they ignore its SIGTERM) forever
    with _held_from_new_processes(signal.SIGINT, signal.SIGTERM):
        if forked:
            pool = _fork_pool(PARALLEL.value)
        else:
            max_tasks = getenv("BEAM_MAX_TASKS_PER_CHILD", 16)
            pool = worker._WorkerContext().Pool(PARALLEL.value, _init_worker, (os.getpid(),), max_tasks)
        # the pool's own finalizer would SIGTERM the workers, which ignore it, and wait forever:
        # it kills them instead, at exit (also in a process that multiprocessing started, a tune
        # worker, where atexit handlers do not run but these finalizers do) and when tinygrad
        # terminates the pool itself (after a Ctrl-C during a compile), which its own
        # terminate() would not do
        pool._terminate.cancel()
        pool._terminate = multiprocessing.util.Finalize(pool, _kill, args=(pool,), exitpriority=15)
        pool.terminate = pool._terminate
        worker.worker_pool = pool


class _Hook:
    """`while_compiling`'s switch: `done()` ends it early."""

    def __init__(self) -> None:
        self.active = True

    def done(self) -> None:
        self.active = False


@contextmanager
def while_compiling(callback) -> Iterator[_Hook]:
    """Inside, `callback()` runs once, as tinygrad is about to compile several kernels together in
    its compile workers: the time this process spends waiting for them, when work of its own
    costs the training loop nothing. Not at all without workers (PARALLEL=0), nor after the
    yielded hook's `done()` (say, once training has started without compiling). An error in the
    callback is not the compile's: it is ignored."""
    from tinygrad.engine import realize

    original, hook = realize.get_worker_pool, _Hook()

    def get_worker_pool():
        pool = original()
        if hook.active and pool is not None:
            hook.done()
            with suppress(Exception):
                callback()
        return pool

    realize.get_worker_pool = get_worker_pool
    try:
        yield hook
    finally:
        realize.get_worker_pool = original


def _kill(pool: multiprocessing.pool.Pool) -> None:
    """Kill `pool`'s workers and reap them, without the pool's own locks (its close() and
    terminate() first take a queue lock that a killed worker may hold)."""
    from tinygrad.engine import worker

    if worker.worker_pool is pool:
        worker.worker_pool = None
    pool._state = pool._worker_handler._state = multiprocessing.pool.TERMINATE  # no replacements
    for process in pool._pool:
        if process.is_alive():
            process.kill()
    for process in pool._pool:
        process.join(timeout=5)


def stop_compile_workers() -> None:
    """End the workers; safe to call when there are none.

    They are killed, not asked to stop: a worker told to stop runs Python's shutdown before it
    exits, and waiting for that took 0.2 s at the end of every run. Whatever a worker compiled
    is already in tinygrad's cache (SQLite, which rolls back a write cut short) or delivered."""
    from tinygrad.engine import worker

    if (pool := worker.worker_pool) is not None:
        pool._terminate.cancel()  # ours, or tinygrad's own, which would wait on the workers forever
        _kill(pool)
