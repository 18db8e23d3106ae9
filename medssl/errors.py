"""User-facing errors: one line, no traceback unless --debug."""


class MedsslError(Exception):
    """An error caused by user input (file, config, dataset) with a one-line message."""
