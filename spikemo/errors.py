"""User-facing errors: each carries one line that names the file or row and what to do.

The command line prints ``str(error)`` alone (no traceback) and exits with the class's exit code.
"""


class SpikemoError(Exception):
    """Base class for problems a user can fix; the message is a single actionable line."""

    exit_code = 2


class ConfigError(SpikemoError):
    """The configuration or command-line options are invalid."""


class DataError(SpikemoError):
    """The input as a whole is unusable (missing file, missing column, no valid row)."""

    exit_code = 3
