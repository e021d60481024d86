"""The `spiralctl` command's entry point. It loads the command line (typer, rich, tinygrad,
numpy: about 0.3 s) under its own guard, so that a Ctrl-C in that time ends the command as one
during a run does, with `error: interrupted` and exit code 130, not a Python traceback."""

import sys

EXIT_INTERRUPTED = 130  # spiralctl.errors.EXIT_INTERRUPTED, which is not loaded yet


def main() -> None:
    try:
        from spiralctl.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    run()
