"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class SpdError(Exception):
    """An error whose message is meant for the user (names the file, key or argument)."""


class DataError(SpdError):
    """Bad input data: unreadable, inconsistent or out-of-range files."""
