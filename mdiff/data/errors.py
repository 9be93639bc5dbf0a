"""The base of every "bad input" error of the data package (the CLI prints these as one line)."""


class DataError(ValueError):
    """Data that cannot be built or read as asked: a missing package, a damaged build, a bad setting."""
