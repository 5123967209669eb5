"""``python -m sjd_min generate ...``: see sjd_min/cli.py."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
