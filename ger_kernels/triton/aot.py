"""Ahead-of-time compilation of every kernel config for a GPU target (default Hopper, sm_90),
without a GPU: PTX and cubin from ``triton.compile``, resource use of the cubin from
``cuobjdump -res-usage`` (the tool ships with triton).

``python -m ger_kernels.triton.aot [--arch 90]`` prints, per kernel, config and dtype:
registers per thread, shared memory, local memory per thread (register spills; what triton
reports as ``n_spills``), whether the PTX uses tensor-core instructions (wgmma or mma), and how the
main loop feeds them (from the TTGIR): how many tiles it writes to shared memory from registers
(a synchronous round trip: loads that cp.async or TMA could stage, or a tile transformed in
registers), and whether a wgmma stays in flight across iterations (sm_90: a wait for all but one).
The convolution kernels are compiled for a p4m group layer with k = 3 on channels_last
tensors; the group batch norm kernels (``bn_*``, config = layout) for GER-UNet's first p4m
map, 4 x (23*8) x 448 x 448, NCHW and channels_last, with every fusion on (residual, ReLU).
Rows ``<family>+bn`` are the bfloat16 kernels of ``triton.conv_norm``: the batch norm (+ ReLU) of the
input applied on load (forward: and the statistics of the output in the epilogue; input gradient:
the ReLU's mask in the epilogue).
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

from ger_kernels.triton import batch_norm, group_conv
from ger_kernels.triton.tuning import CONFIGS, Config, dtype_class

__all__ = ["Resources", "compile_config", "compile_batch_norm", "report", "format_table", "DTYPES", "BN_KERNELS",
           "BN_LAYOUTS", "FUSED_FAMILIES", "FUSED_DTYPE"]

DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# Pointer arguments of each pass's kernels, in order; "x" is the input's dtype, "i32" an index table, "fp32"
# float32 partials or the (3, C) rows of a batch norm applied on load (a TMA config's tensor descriptors
# take the place of the maps they read: ``compile_config``).
_POINTERS = {"forward": ["x", "x", "x", "x", "i32", "i32", "fp32", "fp32"],
             "input_grad": ["x", "x", "x", "i32", "i32", "i32", "x", "fp32"],
             "weight_grad": ["x", "x", "fp32", "i32", "i32", "fp32"]}
# The fused batch norm (``conv_norm``): compiled for every 16-bit config of these families, as
# "<family>+bn" rows.
FUSED_FAMILIES = ("forward", "input_grad", "weight_grad")
FUSED_DTYPE = torch.bfloat16


# Group batch norm kernels and their pointer arguments ("x" the map's dtype, "fp32" per-field vectors, partials)
BN_KERNELS = {"bn_statistics": batch_norm.statistics_kernel, "bn_normalize": batch_norm.normalize_kernel,
              "bn_grad_sums": batch_norm.grad_sums_kernel, "bn_input_grad": batch_norm.input_grad_kernel}
_BN_POINTERS = {"bn_statistics": ["x", "fp32", "fp32"], "bn_normalize": ["x", "x", "x", "fp32", "fp32", "fp32"],
                "bn_grad_sums": ["x", "x", "x", "fp32", "fp32"],
                "bn_input_grad": ["x", "x", "x", "x", "x", "fp32", "fp32", "fp32", "fp32"]}
BN_LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
_BN_MAP = (4, 23 * 8, 448, 448)  # GER-UNet's first p4m map (batch 4, paper widths)


class Resources(NamedTuple):
    family: str
    config: str
    dtype: str
    registers: int
    shared_bytes: int
    spill_bytes: int  # local memory per thread (stack frame + local): register spills
    tensor_cores: str  # "wgmma", "mma" or "none"
    register_staged: int  # tiles a loop body stores to shared memory from registers
    wgmma_in_flight: bool  # a loop body waits for all wgmmas but one (they overlap the next iteration)


def _kernel(family: str, variant: str):
    """The kernel that ``family``'s configs of ``variant`` run (as ``group_conv``'s launchers choose it)."""
    if family == "weight_grad":
        channels = variant.startswith("channels")
        return group_conv.weight_grad_channels_kernel if channels else group_conv.weight_grad_kernel
    fields = variant in group_conv.FIELDS_VARIANTS
    if family == "forward":
        return group_conv.forward_fields_kernel if fields else group_conv.forward_kernel
    return group_conv.input_grad_fields_kernel if fields else group_conv.input_grad_kernel


def _signature(family: str, variant: str, dtype: torch.dtype) -> tuple[object, dict, dict]:
    """``family``'s kernel for configs of ``variant`` (its ``JITFunction``), its Triton signature
    (argument name -> type) and constexpr values for a p4m group layer, k = 3, on channels_last
    tensors (the "taps" forward: a lifting layer with 3 input channels), specialized as the JIT does
    at run time: channel strides of 1 become constants."""
    fn = _kernel(family, variant).jit
    pointers = ["*" + (DTYPES[dtype] if p == "x" else p) for p in _POINTERS[family]]
    constexprs = {"S": 8, "S_IN": 8, "KSIZE": 3, "PRECISION": group_conv.precision(dtype)}
    constexprs.update({name: 1 for name in ("sxc", "soc", "sdc") if name in fn.arg_names})
    for name in ("ALIGN", "ALIGN_DY", "ALIGN_X"):  # strides of a channels_last map with a multiple of 8 channels
        if name in fn.arg_names:
            constexprs[name] = 8
    if family == "forward":
        constexprs.update(HAS_BIAS=True, RELU=False, STATS=False)
    if "UNIT_STRIDE" in fn.arg_names:  # stride 1 (``compile_config(strided=True)``: the other strides)
        constexprs.update(UNIT_STRIDE=True)
    if "FLAT_TAPS" in fn.arg_names:
        constexprs.update(FLAT_TAPS=variant == "taps")
    if variant == "taps":  # 6-byte pixel rows: no vectors along channels
        constexprs.update(S_IN=1, ALIGN=1)
    if family != "input_grad":
        constexprs.update(NORM=False)
    constexprs.update(NORM_RELU=False)
    signature = {}
    for i, name in enumerate(fn.arg_names):
        constant = fn.params[i].is_constexpr or name in constexprs
        signature[name] = pointers[i] if i < len(pointers) else "constexpr" if constant else "i32"
    return fn, signature, constexprs


def _aligned_pointers(fn, signature: dict) -> dict:
    """The ``attrs`` of ``triton.compile``: every pointer argument 16-byte aligned, as the JIT
    specializes the tensors it is launched with."""
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if signature[name].startswith("*")}


def _compile(family: str, config: str, dtype: torch.dtype, fn, signature: dict, constexprs: dict, attrs: dict,
             options: dict, arch: int) -> Resources:
    """``triton.compile`` of one specialization of ``fn`` for sm_``arch``, and its resources."""
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-res-usage", f.name],
                               capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    spills = int(re.search(r"STACK:(\d+)", usage).group(1)) + int(re.search(r"LOCAL:(\d+)", usage).group(1))
    cores = "wgmma" if "wgmma" in ptx else "mma" if re.search(r"\bmma\.sync", ptx) else "none"
    staged, in_flight = _loop_feed(compiled.asm["ttgir"])
    return Resources(family, config, DTYPES[dtype], registers, compiled.metadata.shared, spills, cores, staged,
                     in_flight)


def _loop_feed(ttgir: str) -> tuple[int, bool]:
    """(tiles stored to shared memory from registers, wgmma kept in flight) inside the ``scf.for``
    bodies of a TTGIR module: ``ttg.local_alloc %value`` (an allocation initialized from a register
    tensor) and ``ttng.warp_group_dot_wait`` with ``pendings`` of 1 or more."""
    staged, in_flight, depth, loops = 0, False, 0, []
    for line in ttgir.splitlines():
        if loops:
            staged += bool(re.search(r"ttg\.local_alloc %", line))
            in_flight |= bool(re.search(r"warp_group_dot_wait .*pendings = [1-9]", line))
        if re.search(r"\bscf\.for\b", line):
            loops.append(depth)
        depth += line.count("{") - line.count("}")
        while loops and depth <= loops[-1]:
            loops.pop()
    return staged, in_flight


def compile_config(family: str, config: Config, dtype: torch.dtype, arch: int = 90, fused: bool = False,
                   strided: bool = False) -> Resources:
    """Compiles ``family``'s kernel (of ``config.variant``) with ``config`` for ``dtype`` and sm_``arch``;
    ``fused``: with the batch norm applied on load (+ ReLU) and, forward, the output statistics
    (the row's family is then ``<family>+bn``); ``strided``: the input gradient for strides above 1
    (not a "tma" variant: those need stride 1)."""
    fn, signature, constexprs = _signature(family, config.variant, dtype)
    if strided:
        if family != "input_grad" or config.variant.startswith("tma"):
            raise ValueError(f"strided: the input gradient's configs without TMA only, got {family} {config.name}")
        constexprs.update(UNIT_STRIDE=False)
    constexprs.update(BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k)
    if fused:  # forward and weight gradient: BN-ReLU on load (forward: statistics; "taps", lifting: statistics
        # only); input gradient: the ReLU's mask
        lifting = config.variant == "taps"
        constexprs.update(NORM_RELU=not lifting, **({"NORM": True} if family != "input_grad" and not lifting else {}),
                          **({"HAS_BIAS": False, "STATS": True} if family == "forward" else {}))
    pixels = config.block_k if family == "weight_grad" else config.block_m  # of a box
    width = group_conv._box_width(config, pixels)
    if "TMA" in fn.arg_names:
        constexprs.update(TMA="tma" in config.variant, TILE_W=width)
    rows = f"1,{pixels // width},{width}"
    if config.variant.startswith("tma"):  # the input's (dy's) descriptor: boxes of (1, rows, width, BLOCK_K)
        source = "x_ptr" if family == "forward" else "dy_ptr"
        signature[source] = f"tensordesc<{DTYPES[dtype]}[{rows},{config.block_k}]>"
    if config.variant.startswith("channels-tma"):  # boxes of (1, rows, width, BLOCK_M or BLOCK_N)
        signature["dy_ptr"] = f"tensordesc<{DTYPES[dtype]}[{rows},{config.block_m}]>"
        signature["x_ptr"] = f"tensordesc<{DTYPES[dtype]}[{rows},{config.block_n}]>"
    return _compile(family + "+bn" if fused else family, config.name, dtype, fn, signature, constexprs,
                    _aligned_pointers(fn, signature), {"num_warps": config.num_warps, "num_stages": config.num_stages},
                    arch)


def compile_batch_norm(family: str, layout: str, dtype: torch.dtype, arch: int = 90) -> Resources:
    """Compiles the group batch norm kernel ``family`` (a key of ``BN_KERNELS``) for maps of
    ``layout`` (a key of ``BN_LAYOUTS``) in ``dtype``, tiled as the launchers tile ``_BN_MAP``."""
    fn = BN_KERNELS[family].jit
    tiles = batch_norm.Tiles(torch.empty(_BN_MAP, device="meta").to(memory_format=BN_LAYOUTS[layout]), 8)
    meta = tiles.meta()
    options = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages")}
    flags = {"S": 8, "ITERS": tiles.iters, "HAS_RESIDUAL": True, "RELU": True, "RESIDUAL_GRAD": True}
    constexprs = {**meta, **{name: value for name, value in flags.items() if name in fn.arg_names}}
    pointers = ["*" + (DTYPES[dtype] if p == "x" else p) for p in _BN_POINTERS[family]]
    signature = {name: pointers[i] if i < len(pointers) else "constexpr" if name in constexprs else "i32"
                 for i, name in enumerate(fn.arg_names)}
    return _compile(family, layout, dtype, fn, signature, constexprs, _aligned_pointers(fn, signature), options, arch)


def report(arch: int = 90, workers: int | None = None) -> list[Resources]:
    """Every config of every kernel in every dtype, compiled for sm_``arch`` by ``workers``
    processes (default: one per CPU core)."""
    jobs = [(compile_config, family, config, dtype, arch) for family in ("forward", "input_grad", "weight_grad")
            for dtype in DTYPES for config in CONFIGS[dtype_class(dtype)][family]]
    jobs += [(compile_config, family, config, FUSED_DTYPE, arch, True) for family in FUSED_FAMILIES
             for config in CONFIGS[dtype_class(FUSED_DTYPE)][family]]
    jobs += [(compile_batch_norm, family, layout, dtype, arch) for family in BN_KERNELS for dtype in DTYPES
             for layout in BN_LAYOUTS]
    with concurrent.futures.ProcessPoolExecutor(workers or os.cpu_count(),
                                                mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_run_job, jobs))


def _run_job(job: tuple) -> Resources:
    compile_fn, *args = job
    return compile_fn(*args)


def format_table(rows: list[Resources]) -> str:
    """A markdown table of ``rows``."""
    lines = ["| kernel | config | dtype | registers | shared KiB | spill bytes | tensor cores | tiles staged "
             "through registers | wgmma in flight |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.family} | {r.config} | {r.dtype} | {r.registers} | {r.shared_bytes / 1024:.1f} | "
              f"{r.spill_bytes} | {r.tensor_cores} | {r.register_staged} | "
              f"{'yes' if r.wgmma_in_flight else 'no'} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100")
    args = parser.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}")
    print(format_table(report(args.arch)))


if __name__ == "__main__":
    main()
