"""The one exception type for bad analysis input (the CLI turns it into a one-line message, exit code 2)."""

from mdiff.errors import InputError


class AnalysisError(InputError):
    """Input that cannot be analysed: a missing column, bad values, too few points, an unreadable file."""
