"""The one exception type for bad analysis input (the CLI turns it into a one-line message, exit code 2)."""


class AnalysisError(ValueError):
    """Input that cannot be analysed: a missing column, bad values, too few points, an unreadable file."""
