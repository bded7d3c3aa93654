"""python -m lrq_kernels: the command line (lrq_kernels/cli.py)."""
import sys

from .cli import main

sys.exit(main())
