"""`python -m maekit ...`: the same as the `maekit` command (also what DDP re-launches per rank)."""

import sys

from maekit.cli import main

if __name__ == "__main__":
    sys.exit(main())
