"""The `spiralctl` command's entry point. It loads the command line (typer, rich, tinygrad,
numpy: about 0.2 s) under its own guard, so that a Ctrl-C in that time ends the command as one
during a run does, with `error: interrupted` and exit code 130, not a Python traceback.

When the command is done, the process ends without the interpreter's teardown: after a training
step's kernels, freeing tinygrad's graphs of UOps object by object (each with a `__del__`) took
0.25-0.3 s, longer than the last epoch. Everything that teardown would do for us is done first:
the atexit handlers (tinygrad's devices, multiprocessing's finalizers), tinygrad's cache
database closed, the standard streams flushed. `leave` says when the process ends the usual
way instead."""

import os
import sys
import threading
from contextlib import suppress

EXIT_INTERRUPTED = 130  # spiralctl.errors.EXIT_INTERRUPTED, which is not loaded yet


def main() -> None:
    try:
        from spiralctl.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    try:
        run()
    except SystemExit as done:
        if isinstance(done.code, int) or done.code is None:
            leave(done.code or 0)
        raise


def leave(code: int) -> None:
    """End the process now with `code`, once what Python's own exit would do has been done;
    return (and let Python exit) where skipping the rest would not be safe: another thread or a
    child process still running (Python waits for them, and a Ctrl-C or SIGTERM can end that
    wait), a profiler or tracer (`python -m cProfile -m spiralctl`, coverage, a debugger) that
    reports at exit, `python -i`, or a stream that does not flush. Signals are not held back: a
    Ctrl-C during the atexit handlers does what it does in Python's own exit."""
    import atexit

    if sys.gettrace() is not None or sys.getprofile() is not None or sys.flags.inspect:
        return
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    processes = sys.modules.get("multiprocessing")
    if processes is not None and any(not p.daemon for p in processes.active_children()):
        return  # tune's trial workers: multiprocessing's atexit handler waits for them
    try:
        atexit._run_exitfuncs()  # each runs once: Python's exit finds none left
        _close_kernel_cache(sys.modules.get("tinygrad.helpers"))
        for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}.values():
            if stream is not None:
                stream.flush()
    except KeyboardInterrupt:  # a Ctrl-C in the last moments of the command: it ends as interrupted
        os._exit(EXIT_INTERRUPTED)
    except Exception:  # Python's exit reports it, as it would have
        return
    os._exit(code)


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
