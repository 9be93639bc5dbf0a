"""The base class of every "your input is wrong" error.

A config, file, path, id or argument that cannot be used raises a subclass of `InputError` with one line
naming the input, the value and what is allowed. `mdiff` prints that line and exits with status 2 (a bug
raises anything else and shows its traceback). It subclasses ValueError, so `except ValueError` still
catches these.
"""


class InputError(ValueError):
    """Bad input: reported by the CLI as one line on stderr, exit status 2."""


# Exit statuses shared by every `mdiff` command (a preempted run's 75 lives with the run directory:
# mdiff.rundir.EXIT_PREEMPTED).
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
