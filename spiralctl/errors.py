"""The one kind of error a user should see."""

# Exit codes (see README): 0 ok, 1 the run failed, 2 bad usage or bad input, 130 interrupted.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class SpiralError(Exception):
    """A problem the user can fix: a bad file, a bad option, an unusable device.

    The message names the file or option and says what to do; the CLI prints it
    as one `error:` line and exits with `exit_code`.
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
