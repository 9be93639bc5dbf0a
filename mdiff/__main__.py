"""`python -m mdiff` is the `mdiff` command."""

import sys

from mdiff.cli import main

if __name__ == "__main__":
    sys.exit(main())
