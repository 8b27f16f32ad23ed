"""The one error type users see: a one-line message, exit code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user (recipe, paths, data). The CLI prints it on one line and exits 2."""

    exit_code = 2
