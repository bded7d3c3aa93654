"""The Hopper W·A8 GEMM's weight decoders (csrc/decode_a8.cuh), checked on the CPU: nvcc builds
tests/host/decode_a8_test.cu as a host program, in which the byte permute and the and-or are emulated from
their PTX definitions; it compares every decoded byte with the codebook byte the documented K order names. The
GPU tests (tests/test_cuda_kernels.py) check the same decoders end to end inside the kernel."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found (set CUDA_HOME)")
def test_wgmma_weight_decoders_match_the_k_order(tmp_path):
    exe = str(tmp_path / "decode_a8_test")
    subprocess.run([_nvcc(), "-std=c++17", "-O1", "-I", os.path.join(ROOT, "csrc"),
                    os.path.join(ROOT, "tests", "host", "decode_a8_test.cu"), "-o", exe],
                   check=True, capture_output=True, text=True)
    run = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout + run.stderr
