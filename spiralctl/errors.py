"""The one kind of error a user should see, and the exit codes (see the README)."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable

EXIT_OK = 0
EXIT_FAILURE = 1  # the run failed its own criterion: the loss diverged, accuracy below --min-accuracy
EXIT_USAGE = 2  # bad usage or bad input
EXIT_INTERNAL = 3  # a bug in spiralctl: please report it
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), after saving a resumable checkpoint
EXIT_TERMINATED = 143  # SIGTERM (kill, timeout, Slurm, container runtimes), likewise


class Terminated(BaseException):
    """SIGTERM arrived outside a training (which stops at a resumable point instead, Interrupted).
    Raised where the process is, as Python raises KeyboardInterrupt for a Ctrl-C, so that it
    ends the same way: one `error:` line and EXIT_TERMINATED. Not an Exception, so that no
    `except Exception` on the way takes it for a failure of its own."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


def terminate_on_sigterm() -> None:
    """From now on a SIGTERM raises Terminated in the main thread, as a Ctrl-C raises
    KeyboardInterrupt; training and tune put their own handlers in its place while they run,
    and give this one back. A SIGTERM this process was started ignoring (SIG_IGN, from its
    parent) stays ignored, and a handler set outside Python is left alone."""
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_terminated)


class SpiralError(Exception):
    """A problem the user can fix: a bad file, a bad setting, an unusable device.

    The message says what is wrong and what to do, in the library's words: `option` names the
    setting at fault (e.g. "batch_size") and the message leads with it; other settings it
    mentions are written {name}. The CLI renders each as its option (`--batch-size`), a library
    caller sees the plain name.
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, *, option: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.option = option

    def render(self, name: Callable[[str], str]) -> str:
        """The message with every setting written as name(setting)."""
        text = render_settings(self.message, name)
        return f"{name(self.option)} {text}" if self.option else text

    def __str__(self) -> str:
        return self.render(lambda setting: setting)


_SETTING = re.compile(r"\{([a-z][a-z_]*)\}")


def render_settings(text: str, name: Callable[[str], str]) -> str:
    """`text` with each setting written {setting} replaced by name(setting)."""
    return _SETTING.sub(lambda m: name(m.group(1)), text)


class WriteFailed(SpiralError):
    """A file could not be written (a full disk, a read-only folder); nothing was replaced."""

    def __init__(self, path: str, reason: str, hint: str = "") -> None:
        super().__init__(f"cannot write {path}: {reason}{hint}")
        self.path, self.reason = path, reason


class OutputFailed(SpiralError):
    """Standard output (or error) could not be written: a full disk, a failing device. (A reader
    that went away, `| head`, is not an error.)"""

    def __init__(self, stream: str, reason: str) -> None:
        super().__init__(
            f"cannot write to {stream}: {reason}; free some space or send the output elsewhere",
            EXIT_FAILURE,
        )


class Interrupted(SpiralError):
    """Training stopped by a signal after saving `checkpoint`, which resumes it up to `epochs`."""

    def __init__(self, signum: int, where: str, checkpoint: str, epochs: int) -> None:
        name = signal.Signals(signum).name
        code = EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED
        super().__init__(f"{name}: stopped {where}; saved {checkpoint}", exit_code=code)
        self.signum, self.checkpoint, self.epochs = signum, checkpoint, epochs
