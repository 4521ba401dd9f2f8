"""Where the CuTe/CUTLASS headers of the CUDA kernels are: the `nvidia-cutlass` package ships them as
cutlass_library/source/include/{cute,cutlass}. Found without importing the package (its import needs
cuda-python). Used by setup.py, CMakeLists.txt (run as a script: prints the directory) and the nvcc tests.
"""

import importlib.util
import pathlib
import sys


def cutlass_include_dir() -> pathlib.Path | None:
    """The include directory holding cute/ and cutlass/, or None when nvidia-cutlass is not installed."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        include = pathlib.Path(location) / "source" / "include"
        if (include / "cute").is_dir() and (include / "cutlass").is_dir():
            return include
    return None


if __name__ == "__main__":
    found = cutlass_include_dir()
    if found is None:
        sys.exit("nvidia-cutlass is not installed (pip install nvidia-cutlass)")
    print(found)
