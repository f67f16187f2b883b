"""User-facing errors: the CLI prints these as one paragraph, without a traceback, and exits non-zero."""


class BenchError(Exception):
    """Something the user can fix: bad names, missing data, incompatible choices."""

    exit_code = 2
