"""Builds ger_kernels._C from csrc/ with torch.utils.cpp_extension and ninja.

CUDA sources are added when torch was built with CUDA (torch.version.cuda) and a
CUDA toolkit is found (CUDA_HOME), or when FORCE_CUDA=1. Whether a GPU is present
does not matter, so a build host without one still ships CUDA kernels.
Install after torch: pip install --no-build-isolation -e .
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def with_cuda() -> bool:
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
    return CUDAExtension("ger_kernels._C", sources, extra_compile_args=extra_compile_args)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
