"""The `spiralctl` command's entry point. It loads the command line (typer, rich, tinygrad,
numpy: about 0.2 s) under its own guard, so that a Ctrl-C in that time ends the command as one
during a run does, with `error: interrupted` and exit code 130, not a Python traceback. A SIGTERM
from the first moment on does the same with `error: terminated` and 143 (training and tune
handle it themselves while they run: they stop at a resumable point).

When the command is done, the process ends without the interpreter's teardown: after a training
step's kernels, freeing tinygrad's graphs of UOps object by object (each with a `__del__`) took
0.25-0.3 s, longer than the last epoch. Everything that teardown would do for us is done first:
the atexit handlers (tinygrad's devices, multiprocessing's finalizers), tinygrad's cache
database closed, the standard streams flushed. `leave` says when the process ends the usual
way instead."""

import os
import signal
import sys
import threading
from contextlib import suppress

from spiralctl.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, terminate_on_sigterm


def main() -> None:
    terminate_on_sigterm()  # before anything else loads: a SIGTERM from here on is one line
    try:
        from spiralctl.cli import main as run
    except KeyboardInterrupt:
        _error_line("interrupted")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Terminated:
        _error_line("terminated")
        raise SystemExit(EXIT_TERMINATED) from None
    try:
        run()
    except SystemExit as done:
        if isinstance(done.code, int) or done.code is None:
            leave(done.code or 0)
        raise
    except Terminated:  # past the command line's own guard, in the command's last moments
        _error_line("terminated")
        leave(EXIT_TERMINATED)
        raise SystemExit(EXIT_TERMINATED) from None


def _error_line(message: str) -> None:
    """spiralctl.ui.error_line, which may not be loaded: a stderr that cannot be written changes
    nothing (the exit code says it)."""
    with suppress(OSError, ValueError):
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()


def leave(code: int) -> None:
    """End the process now with `code`, once what Python's own exit would do has been done;
    return (and let Python exit) where skipping the rest would not be safe: another thread or a
    child process still running (Python waits for them, and a Ctrl-C or SIGTERM can end that
    wait), a profiler or tracer (`python -m cProfile -m spiralctl`, coverage, a debugger) that
    reports at exit, `python -i`, or a stream that does not flush. Signals are not held back: a
    Ctrl-C during the atexit handlers does what it does in Python's own exit; a SIGTERM ends
    the process at once with its exit code, there and in Python's own exit."""
    import atexit

    if sys.gettrace() is not None or sys.getprofile() is not None or sys.flags.inspect:
        return _sigterm_ends_at_once()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return _sigterm_ends_at_once()
    processes = sys.modules.get("multiprocessing")
    if processes is not None and any(not p.daemon for p in processes.active_children()):
        return _sigterm_ends_at_once()  # tune's trial workers: multiprocessing's atexit handler waits
    try:
        atexit._run_exitfuncs()  # each runs once: Python's exit finds none left
        _close_kernel_cache(sys.modules.get("tinygrad.helpers"))
        for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}.values():
            if stream is not None:
                stream.flush()
    except KeyboardInterrupt:  # a Ctrl-C in the last moments of the command: it ends as interrupted
        os._exit(EXIT_INTERRUPTED)
    except Terminated:  # a SIGTERM, likewise
        _error_line("terminated")
        os._exit(EXIT_TERMINATED)
    except Exception:  # Python's exit reports it, as it would have
        return _sigterm_ends_at_once()
    os._exit(code)


def _sigterm_ends_at_once() -> None:
    """In Python's own exit, a SIGTERM ends the process then and there, as its default action
    would, but with its exit code: not a Terminated raised into the interpreter's teardown
    (waiting for threads and child processes, the atexit handlers), which would print it as an
    exception ignored and go on waiting."""

    def end(signum, frame) -> None:
        with suppress(OSError):
            os.write(2, b"error: terminated\n")
        os._exit(EXIT_TERMINATED)

    if threading.current_thread() is threading.main_thread():
        with suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, end)


def _close_kernel_cache(tinygrad) -> None:
    """Close tinygrad's kernel cache (SQLite) as the interpreter's teardown would. When no other
    process has it open, the last connection to close folds the write-ahead log into cache.db and
    deletes cache.db-wal and -shm; the compile workers, killed at exit, never close theirs, so a
    process whose own connection is gone (closed before the workers were forked) opens one to
    close: only an existing cache.db, read-write, never creating one."""
    if tinygrad is None:
        return
    db, tinygrad._db_connection = tinygrad._db_connection, None
    path = str(tinygrad.CACHEDB)
    if (
        db is None
        and tinygrad.CACHELEVEL.value >= 1
        and os.path.exists(f"{path}-wal")
        and os.path.exists(path)
    ):
        import sqlite3
        from urllib.parse import quote

        with suppress(sqlite3.Error):
            db = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=1)
            db.execute("PRAGMA schema_version").fetchone()  # SQLite opens the files lazily
    if db is not None:
        db.close()
