"""``python -m dragsaw``: the command line (the same as the ``dragsaw`` command)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
