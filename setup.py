"""lrq_kernels: low-bit (TLQ 3/4-bit weights, FP8/INT8/INT4 activations) inference kernels for DiTs.

Install torch first (`pip install torch==2.13.0` on a CPU machine): the requirement below is a range that an
installed torch satisfies, so pip never pulls another build of it.
"""
from setuptools import find_packages, setup

setup(
    name="lrq_kernels",
    version="0.1.0",
    description="Low-bit inference kernels for Diffusion Transformers: TLQ weights, ARS rotation, FP8 activations",
    packages=find_packages(include=["lrq_kernels", "lrq_kernels.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "diffusers>=0.30",
        "safetensors",
        "tqdm",
        "numpy",
    ],
    extras_require={"test": ["pytest", "pytest-benchmark"]},
)
