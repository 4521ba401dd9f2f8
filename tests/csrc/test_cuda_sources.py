"""Compiles the CUDA sources without a GPU: every .cu with nvcc for sm_80 and sm_90 (``-Xptxas -v``,
failing on errors and register spills), checks the sm_80 SASS for tensor-core instructions (HMMA) in every
16-bit kernel (the CuTe and WMMA ones), and compiles the torch glue in csrc/cuda/*.cpp with g++ against
torch's headers (syntax only).

The CuTe kernels (csrc/cuda/group_conv_cute.cu) need the CuTe/CUTLASS headers of nvidia-cutlass: without
that package their compile is skipped, and the other sources compile without them (GER_KERNELS_CUTE=0),
as setup.py builds them. Skipped where nvcc is absent, unless GER_KERNELS_REQUIRE_NVCC=1 (set by CI when it
has nvcc), which also requires nvidia-cutlass and a cuobjdump (triton ships one).
"""

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CU_FILES = sorted((ROOT / "csrc").rglob("*.cu"))
CUTE_FILES = {ROOT / "csrc/cuda/group_conv_cute.cu"}
GLUE_FILES = sorted((ROOT / "csrc/cuda").glob("*.cpp"))
NVCC = shutil.which("nvcc")
REQUIRED = os.environ.get("GER_KERNELS_REQUIRE_NVCC") == "1"


def _load_cutlass_include():
    spec = importlib.util.spec_from_file_location("cutlass_include", ROOT / "csrc/cutlass_include.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cutlass_include_dir()


CUTLASS = _load_cutlass_include()

if NVCC is None and REQUIRED:
    raise RuntimeError("GER_KERNELS_REQUIRE_NVCC=1 but nvcc is not on the PATH")
if CUTLASS is None and REQUIRED:
    raise RuntimeError("GER_KERNELS_REQUIRE_NVCC=1 but nvidia-cutlass (the CuTe headers) is not installed")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")


def cuobjdump() -> str | None:
    """cuobjdump from the PATH, the CUDA toolkit, or triton's bundled copy."""
    found = shutil.which("cuobjdump")
    if found is None and NVCC is not None:
        candidate = pathlib.Path(NVCC).resolve().parent / "cuobjdump"
        found = str(candidate) if candidate.exists() else None
    if found is None:
        try:
            import triton

            found = triton.knobs.nvidia.cuobjdump.path
        except (ImportError, AttributeError):
            found = None
    return found


def cuda_include_flags() -> list[str]:
    """The include directories nvcc itself uses (it may be a wrapper outside the toolkit)."""
    report = subprocess.run([NVCC, "-v", "-E", "-x", "cu", os.devnull, "-o", os.devnull],
                            capture_output=True, text=True).stderr
    dirs = re.findall(r'-(?:I|isystem" ")"?([^"\s]+)', "\n".join(l for l in report.splitlines() if "INCLUDES=" in l))
    assert dirs, report
    return [f"-I{d}" for d in dirs]


_compiled: dict[tuple[pathlib.Path, str], tuple[pathlib.Path, str]] = {}


def compile_source(source: pathlib.Path, arch: str, tmp_path_factory) -> tuple[pathlib.Path, str]:
    """The object file and ptxas report of one .cu for one arch, compiled once per session with the flags of
    setup.py's build (torch's nvcc flags: no implicit half conversions, relaxed constexpr)."""
    if (source, arch) not in _compiled:
        from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

        if source in CUTE_FILES and CUTLASS is None:
            pytest.skip("nvidia-cutlass is not installed: the CuTe kernels are not built")
        flags = [f"-I{CUTLASS}", "-DGER_KERNELS_CUTE=1"] if CUTLASS is not None else ["-DGER_KERNELS_CUTE=0"]
        flags += COMMON_NVCC_FLAGS
        out = tmp_path_factory.mktemp(f"{source.stem}_{arch}") / "out.o"
        result = subprocess.run([NVCC, "-std=c++20", "-O3", f"-arch={arch}", "-Xptxas", "-v", *flags, "-c",
                                 str(source), "-o", str(out)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        _compiled[source, arch] = out, result.stderr
    return _compiled[source, arch]


def test_there_are_cuda_sources():
    assert CU_FILES and GLUE_FILES and CUTE_FILES <= set(CU_FILES)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_without_spills(source, arch, tmp_path_factory):
    _, report = compile_source(source, arch, tmp_path_factory)
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    assert spills and max(spills) == 0, report
    print(f"{source.name} {arch}:\n" + "\n".join(l for l in report.splitlines() if "Used" in l))


def sass_functions(sass: str) -> dict[str, str]:
    """cuobjdump -sass output split into {mangled kernel name: its SASS}."""
    parts = re.split(r"^\s*Function : (\S+)\s*$", sass, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_16bit_kernels_use_tensor_cores(source, tmp_path_factory):
    """Every CuTe and WMMA kernel (all of them 16-bit) issues HMMA on sm_80; the CuTe ones also ldmatrix
    (LDSM), and cp.async (LDGSTS) where an operand is copied asynchronously (all but the weight gradient of
    tensors that are not channels-last)."""
    tool = cuobjdump()
    if tool is None:
        if REQUIRED:
            raise RuntimeError("GER_KERNELS_REQUIRE_NVCC=1 but no cuobjdump was found")
        pytest.skip("no cuobjdump (CUDA toolkit or triton)")
    obj, _ = compile_source(source, "sm_80", tmp_path_factory)
    functions = sass_functions(subprocess.run([tool, "-sass", str(obj)], capture_output=True, text=True,
                                              check=True).stdout)
    assert functions
    cute = {name for name in functions if "cute_gemm" in name or "cute_weight_grad" in name}
    tensor_core = {name: sass for name, sass in functions.items() if name in cute or "wmma_gemm" in name}
    if source in CUTE_FILES:  # GEMMs, and the permutation of the weight into the copy forward/input grad read
        assert tensor_core.keys() == {name for name in functions if "permute_weight" not in name}
    for name, sass in tensor_core.items():
        assert "HMMA.16816.F32" in sass, name
        if name in cute:  # cute_gemm<..., WeightGrad> gathers both operands, every other copies with cp.async
            assert "LDSM" in sass, name
            assert ("LDGSTS" in sass) == ("cute_weight_grad" in name or "WeightGrad" not in name), name


def ger_kernels_symbols(obj: pathlib.Path, undefined: bool) -> set[str]:
    """The demangled ger_kernels:: functions an object file defines (or, undefined=True, needs)."""
    listing = subprocess.run(["nm", "-C", "-u" if undefined else "--defined-only", str(obj)], capture_output=True,
                             text=True, check=True).stdout
    return {m.group(1) for m in re.finditer(r"\s(ger_kernels::[^(]+)\(", listing)}


def test_sources_link_without_cute(tmp_path):
    """Built without nvidia-cutlass (GER_KERNELS_CUTE=0, as setup.py does then), the .cu objects need no
    ger_kernels function that only the CuTe build defines: every one they call is defined by one of them
    (a call left outside `#if GER_KERNELS_CUTE` made _C fail to load: undefined symbol cute_vectorizable).
    PTX only: the host objects are what links."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    defined, needed = set(), {}
    for source in CU_FILES:
        obj = tmp_path / f"{source.stem}.o"
        result = subprocess.run([NVCC, "-std=c++20", "-O3", "-gencode", "arch=compute_80,code=compute_80",
                                 "-DGER_KERNELS_CUTE=0", *COMMON_NVCC_FLAGS, "-c", str(source), "-o", str(obj)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        defined |= ger_kernels_symbols(obj, undefined=False)
        needed[source.name] = ger_kernels_symbols(obj, undefined=True)
    assert defined
    assert {name: symbols - defined for name, symbols in needed.items()} == {name: set() for name in needed}


@pytest.mark.parametrize("source", GLUE_FILES, ids=lambda p: p.name)
def test_torch_glue_compiles(source, tmp_path):
    from torch.utils.cpp_extension import include_paths

    # CPU wheels ship c10/cuda headers but not this generated one; an empty stand-in suffices to parse.
    stub = tmp_path / "c10/cuda/impl/cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n")
    includes = [f"-I{p}" for p in include_paths()] + [f"-I{tmp_path}"] + cuda_include_flags()
    result = subprocess.run(["g++", "-std=c++20", "-fsyntax-only", "-DWITH_CUDA", *includes, str(source)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
