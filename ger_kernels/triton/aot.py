"""Ahead-of-time compilation of every kernel config for a GPU target (default Hopper, sm_90),
without a GPU: PTX and cubin from ``triton.compile``, resource use of the cubin from
``cuobjdump -res-usage`` (the tool ships with triton).

``python -m ger_kernels.triton.aot [--arch 90]`` prints, per kernel, config and dtype:
registers per thread, shared memory, local memory per thread (register spills; what triton
reports as ``n_spills``), and whether the PTX uses tensor-core instructions (wgmma or mma).
The kernels are compiled for a p4m group layer with k = 3 on channels_last tensors.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import re
import subprocess
import tempfile
from typing import NamedTuple

import torch
import triton
from triton.backends.compiler import GPUTarget

from ger_kernels.triton import group_conv
from ger_kernels.triton.tuning import CONFIGS, Config, dtype_class

__all__ = ["Resources", "compile_config", "report", "format_table", "DTYPES"]

DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_KERNELS = {"forward": group_conv.forward_kernel, "input_grad": group_conv.input_grad_kernel,
            "weight_grad": group_conv.weight_grad_kernel,
            "weight_grad-channels": group_conv.weight_grad_channels_kernel}  # family-variant of a Config
# Pointer arguments of each kernel, in order; "x" is the input's dtype, "i32" an index table.
_POINTERS = {"forward": ["x", "x", "x", "x", "i32", "i32"],
             "input_grad": ["x", "x", "x", "i32", "i32", "i32", "i32"],
             "weight_grad": ["x", "x", "fp32", "i32", "i32"], "weight_grad-channels": ["x", "x", "fp32", "i32", "i32"]}


class Resources(NamedTuple):
    family: str
    config: str
    dtype: str
    registers: int
    shared_bytes: int
    spill_bytes: int  # local memory per thread (stack frame + local): register spills
    tensor_cores: str  # "wgmma", "mma" or "none"


def _signature(family: str, dtype: torch.dtype) -> tuple[dict, dict, dict]:
    """Triton signature (argument name -> type), constexpr values and attributes of a p4m group
    layer, k = 3, on channels_last tensors, specialized as the JIT does at run time: channel
    strides of 1 become constants, pointers are 16-byte aligned."""
    fn = _KERNELS[family].jit
    pointers = ["*" + (DTYPES[dtype] if p == "x" else p) for p in _POINTERS[family]]
    constexprs = {"S": 8, "S_IN": 8, "KSIZE": 3, "PRECISION": group_conv.precision(dtype)}
    constexprs.update({name: 1 for name in ("sxc", "soc", "sdc") if name in fn.arg_names})
    if family != "weight_grad":
        constexprs["ALIGN"] = 8  # strides of a channels_last map with a multiple of 8 channels
    if family == "forward":
        constexprs.update(HAS_BIAS=True, RELU=False)
    signature = {}
    for i, name in enumerate(fn.arg_names):
        constant = fn.params[i].is_constexpr or name in constexprs
        signature[name] = pointers[i] if i < len(pointers) else "constexpr" if constant else "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(pointers))}
    return signature, constexprs, attrs


def compile_config(family: str, config: Config, dtype: torch.dtype, arch: int = 90) -> Resources:
    """Compiles ``family``'s kernel (of ``config.variant``) with ``config`` for ``dtype`` and sm_``arch``."""
    kernel = f"{family}-{config.variant}" if config.variant else family
    signature, constexprs, attrs = _signature(kernel, dtype)
    constexprs.update(BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k)
    source = triton.compiler.ASTSource(fn=_KERNELS[kernel].jit, signature=signature, constexprs=constexprs,
                                       attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-res-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    spills = int(re.search(r"STACK:(\d+)", usage).group(1)) + int(re.search(r"LOCAL:(\d+)", usage).group(1))
    cores = "wgmma" if "wgmma" in ptx else "mma" if re.search(r"\bmma\.sync", ptx) else "none"
    return Resources(family, config.name, DTYPES[dtype], registers, compiled.metadata.shared, spills, cores)


def report(arch: int = 90, workers: int | None = None) -> list[Resources]:
    """Every config of every kernel in every dtype, compiled for sm_``arch`` by ``workers``
    processes (default: one per CPU core)."""
    jobs = [(family, config, dtype, arch) for family in ("forward", "input_grad", "weight_grad") for dtype in DTYPES
            for config in CONFIGS[dtype_class(dtype)][family]]
    with concurrent.futures.ProcessPoolExecutor(workers or os.cpu_count(),
                                                mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(compile_config, *zip(*jobs)))


def format_table(rows: list[Resources]) -> str:
    """A markdown table of ``rows``."""
    lines = ["| kernel | config | dtype | registers | shared KiB | spill bytes | tensor cores |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.family} | {r.config} | {r.dtype} | {r.registers} | {r.shared_bytes / 1024:.1f} | "
              f"{r.spill_bytes} | {r.tensor_cores} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100")
    args = parser.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}")
    print(format_table(report(args.arch)))


if __name__ == "__main__":
    main()
