"""The base of every "bad input" error of the data package (the CLI prints these as one line)."""

from mdiff.errors import InputError


class DataError(InputError):
    """Data that cannot be built or read as asked: a missing package, a damaged build, a bad setting."""
