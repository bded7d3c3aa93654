"""bench_dit: one DiT transformer forward at the real configs (lrq_kernels/benchmark.py says what it measures).

    python benchmarks/bench_dit.py [--models ...] [--modes ...] [--compile eager|compiled|both] [--profile]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lrq_kernels.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:] + (["--out", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")]
                         if "--out" not in sys.argv else []))
