"""Worker entry point: ``python -m mi_bench.sweep <sweep folder> <cell hash> [key=value ...] [--force]``."""

import sys

from mi_bench.sweep.worker import main

sys.exit(main(sys.argv[1:]))
