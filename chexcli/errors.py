"""User-facing errors: one line that says what went wrong and what to do."""


class ChexError(Exception):
    """An error caused by the user's input (files, options, credentials).

    The CLI prints the message on one line and exits with `exit_code`
    (2 for bad input or usage, 1 for a failure while working).
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
