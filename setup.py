"""Builds ger_kernels._C from csrc/ with torch.utils.cpp_extension and ninja.

CUDA sources are added when torch was built with CUDA (torch.version.cuda) and a
CUDA toolkit is found (CUDA_HOME), or when FORCE_CUDA=1. Whether a GPU is present
does not matter, so a build host without one still ships CUDA kernels.
GER_KERNELS_CPU_ONLY=1 leaves the CUDA sources out even then (a CPU-only build against
a CUDA build of torch, e.g. to test the CPU kernels under another torch version).
The 16-bit tensor-core kernels are written with CuTe: their headers come from the
installed nvidia-cutlass package (csrc/cutlass_include.py). Without it the CUDA
build warns and leaves them out (GER_KERNELS_CUTE=0: the WMMA kernels run instead).
Install after torch: pip install --no-build-isolation -e .
"""

import glob
import os
import pathlib
import sys
import warnings

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # build backends need not put it there
from csrc.cutlass_include import cutlass_include_dir  # noqa: E402


def with_cuda() -> bool:
    if os.environ.get("GER_KERNELS_CPU_ONLY", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    extra_compile_args = {"cxx": ["-O3"]}
    if not with_cuda():
        return CppExtension("ger_kernels._C", sources, extra_compile_args=extra_compile_args)
    sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    extra_compile_args["nvcc"] = ["-O3", "-lineinfo"]
    include_dirs = []
    cutlass = cutlass_include_dir()
    if cutlass is None:
        warnings.warn("nvidia-cutlass is not installed: building the CUDA kernels without the CuTe tensor-core "
                      "kernels (pip install nvidia-cutlass, then rebuild)")
        extra_compile_args["nvcc"].append("-DGER_KERNELS_CUTE=0")
    else:
        include_dirs.append(str(cutlass))
        extra_compile_args["nvcc"].append("-DGER_KERNELS_CUTE=1")
    return CUDAExtension("ger_kernels._C", sources, include_dirs=include_dirs, extra_compile_args=extra_compile_args)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
