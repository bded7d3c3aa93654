"""lrq_kernels: low-bit (TLQ 3/4-bit weights, FP8/INT8/INT4 activations) inference kernels for DiTs.

Install torch first (`pip install torch==2.13.0` on a CPU machine): the requirement below is a range that an
installed torch satisfies, so pip never pulls another build of it.

The CUDA extension lrq_kernels._C (csrc/, CMakeLists.txt) is built with CMake and ninja when nvcc is found; it
does not link PyTorch, so it builds without a GPU. LRQ_SKIP_CUDA_BUILD=1 skips it; without it the package still
installs and every op runs its Triton kernel or PyTorch reference.
"""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


def _nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


class CMakeBuild(build_ext):
    """Builds lrq_kernels._C by running CMake (ninja generator) into this command's output directory."""

    def run(self):
        if os.environ.get("LRQ_SKIP_CUDA_BUILD", "0") == "1":
            print("lrq_kernels: LRQ_SKIP_CUDA_BUILD=1, not building the CUDA extension lrq_kernels._C")
            return
        nvcc = _nvcc()
        if nvcc is None:
            print("lrq_kernels: nvcc not found (set CUDA_HOME), not building the CUDA extension lrq_kernels._C; "
                  "the ops will use their Triton kernels and PyTorch references")
            return
        for ext in self.extensions:
            self.build_cmake(ext, nvcc)

    def build_cmake(self, ext, nvcc):
        import pybind11

        out_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        build_dir = os.path.abspath(os.path.join(self.build_temp, "cmake"))
        os.makedirs(build_dir, exist_ok=True)
        src = os.path.dirname(os.path.abspath(__file__))
        cmake = shutil.which("cmake") or "cmake"
        configure = [cmake, "-S", src, "-B", build_dir, "-G", "Ninja", f"-DCMAKE_CUDA_COMPILER={nvcc}",
                     f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}",
                     f"-DLRQ_OUTPUT_DIR={out_dir}", "-DCMAKE_BUILD_TYPE=Release"]
        print("lrq_kernels: building lrq_kernels._C with", nvcc)
        subprocess.check_call(configure)
        subprocess.check_call([cmake, "--build", build_dir, "--parallel", str(os.cpu_count() or 2)])


setup(
    name="lrq_kernels",
    version="0.1.0",
    description="Low-bit inference kernels for Diffusion Transformers: TLQ weights, ARS rotation, FP8 activations",
    packages=find_packages(include=["lrq_kernels", "lrq_kernels.*"]),
    ext_modules=[Extension("lrq_kernels._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "diffusers>=0.30",
        "safetensors",
        "tqdm",
        "numpy",
    ],
    extras_require={"test": ["pytest", "pytest-benchmark", "transformers"]},   # transformers: the pipeline test
)
