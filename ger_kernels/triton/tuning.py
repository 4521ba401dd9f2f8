"""Launch configurations of the Triton kernels and the choice among them.

Each kernel family ("forward", "input_grad", "weight_grad") has, per dtype class
("float32" or "half"), a short list of named ``Config`` s (tile sizes of its implicit GEMM,
warps, pipeline stages). A problem class (the ``key``: dtype, group, filter, stride and
power-of-two buckets of the GEMM sizes) is tuned once: every config is timed, the fastest
is kept in memory and in a JSON file ``triton_tuning.json`` under the cache directory
(``$GER_KERNELS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ger_kernels``, else
``~/.cache/ger_kernels``), written atomically, so a second process does not tune again. Callers
name the device (GPU name and Triton version) apart from the problem class.

Before timing, the tuner looks the problem class up in the default-config table of the GPU
architecture, ``configs_<arch>.json`` beside this module (``arch`` as ``sm90``), which
``benchmarks/gpu_sweep.py`` writes from measurements: first calls on those GPUs need no tuning.
Its ``entries`` map ``family|kind|problem class`` to ``{"config": name, ...}`` (the other fields
are the sweep's measurements); a problem class without an entry, or whose config is no longer in
the list, is timed.

``GER_KERNELS_TRITON_CONFIG`` forces configs, for tests and reproducible runs: an index
(that config in every list), or comma-separated names (each forces the lists holding it;
the other lists use their first config). The interpreter (``TRITON_INTERPRET=1``)
never times anything: it uses the forced or the first config. Configs of kernels not yet run
on a GPU (``UNVERIFIED``) are timed only with ``GER_KERNELS_TRITON_UNVERIFIED=1``.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, NamedTuple

import torch

from ger_kernels._io import read_json_object, read_table_entries, update_json_object
from ger_kernels.triton import interpreting

__all__ = ["Config", "CONFIGS", "DEFAULTS_DIR", "FORCE_ENV", "FUSED_SPILLS", "FUSED_TAG", "UNVERIFIED",
           "UNVERIFIED_ENV", "Tuner", "arch_name", "cache_path", "defaults_path", "dtype_class", "entry",
           "forced_config", "read_defaults", "size_bucket", "tunable"]

FORCE_ENV = "GER_KERNELS_TRITON_CONFIG"
FUSED_TAG = "bn"  # the last element of the problem class of a kernel with a fused batch norm
DEFAULTS_DIR = pathlib.Path(__file__).resolve().parent


class Config(NamedTuple):
    """Tiles ``BLOCK_M x BLOCK_N`` of the GEMM result, ``BLOCK_K`` of its reduction; ``variant``
    names another kernel of the family ("channels": the weight gradient with rows C_out*S)."""
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    variant: str = ""

    @property
    def name(self) -> str:
        name = f"m{self.block_m}n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}"
        return f"{name}-{self.variant}" if self.variant else name

    def meta(self) -> dict:
        """Keyword arguments of a launch: the tile constexprs, warps and stages."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k,
                "num_warps": self.num_warps, "num_stages": self.num_stages}


# forward and input_grad: M = pixels, N = channels, K = channels of one tap (a multiple of the
# group order, which the kernels rely on; 16 suits lifting layers with few input channels).
# weight_grad: M = output fields, N = base input channels, K = pixels; its "channels" variant:
# M = output channels C_out*S (full tiles), N = input channels, K = pixels, per tap (BLOCK_M a
# multiple of S, BLOCK_N of S_in).
# float32 runs on FMA units (IEEE) and needs smaller tiles per thread than the tensor-core
# dtypes. Every config compiles for sm_90 without register spills (ger_kernels.triton.aot).
# Hopper-sized configs (BLOCK_K 64: 128-byte rows of 16-bit elements, wgmma's widest shared-memory
# swizzle) with 128x64 tiles and 8 warps fit in registers. Left out because they spill (triton 3.9,
# sm_90, bf16, 8 or 16 warps, 3 or 4 stages): forward and input_grad at 128x128 (BLOCK_K 32 or 64:
# 250 to 450 bytes per thread) and every kernel at 128x256 (1.0 to 2.8 KiB); weight_grad at 128x128
# fits with BLOCK_K 32 only (48 bytes at 64). The weight tile's per-element gather through the
# orientation table holds an address per element: that, not the accumulator, fills the registers.
# The "channels" weight gradient loads both operands as vectors, one tap per program: 128x128x64 in
# 122 registers (two programs per SM), 128x256 and 256x128 in 218-243 (one; fused with a batch norm
# they spill 32-104 bytes).
_HALF_PIXEL_GEMM = [Config(128, 64, 32, 8, 3), Config(64, 128, 32, 8, 3), Config(64, 64, 32, 4, 3),
                    Config(64, 64, 16, 4, 4), Config(128, 64, 64, 8, 3), Config(64, 64, 64, 4, 4)]
_WEIGHT_GRAD = [Config(64, 64, 32, 4, 3), Config(128, 64, 32, 8, 3), Config(64, 128, 32, 8, 3),
                Config(64, 32, 32, 4, 3)]
# The "taps" variant of the forward: for lifting layers (one orientation in, a few channels) the plain
# kernel's reduction runs over the k*k*C (tap, channel) pairs, BLOCK_K at a time: 27 of 32 rows of one
# step are used at 3 channels, against 3 of 16 in each of the nine steps of the plain kernel. Elsewhere
# these configs run the plain kernel. Both operands are gathered element by element (no pipeline to
# keep: one step at 3 channels, so one stage); 238-255 registers, and wider tiles than these spill
# (m128n128, m256n64, or 128x64 on 4 warps: 328-696 bytes; triton 3.9, sm_90, bf16).
_HALF_LIFTING_TAPS = [Config(128, 64, 32, 8, 1, "taps"), Config(64, 128, 32, 8, 1, "taps"),
                      Config(64, 64, 32, 4, 1, "taps")]
_FLOAT32_LIFTING_TAPS = [Config(64, 64, 32, 8, 1, "taps")]
# The "fields" variant of forward and input_grad: a tile's columns are BLOCK_N // S whole fields,
# its weight tile read as 16-byte vectors (cp.async, one buffer per stage, straight into the wgmma
# operand's layout) from a field-minor copy of w (see group_conv).
# 128x128 tiles spill with it too (triton 3.9, sm_90, bf16: 720 bytes at 8 warps, 2.6 KiB at 4).
_HALF_FIELDS = [Config(128, 64, 64, 8, 3, "fields"), Config(128, 64, 64, 8, 4, "fields"),
                Config(128, 64, 32, 8, 4, "fields"), Config(64, 128, 64, 8, 3, "fields"),
                Config(64, 64, 64, 4, 4, "fields")]
# The "tma" variant of forward and input_grad: "fields" with the activation (dy) tile read through a
# tensor descriptor (stride 1, channels_last; elsewhere the "fields" kernel runs with the same tiles).
# The descriptor takes the activation's pointers and masks out of the registers: 124 registers at
# 128x128 (two programs per SM at 3 stages, 84 KiB of shared memory each), no spills up to 128x256
# and 256x128 (triton 3.9, sm_90, bf16). The activation tile keeps stages - 1 buffers, the weight
# tile stages.
_HALF_TMA = [Config(128, 128, 64, 8, 3, "tma"), Config(128, 64, 64, 8, 3, "tma"), Config(128, 256, 64, 8, 3, "tma"),
             Config(256, 128, 64, 8, 3, "tma"), Config(128, 128, 32, 8, 4, "tma"), Config(64, 128, 64, 4, 4, "tma"),
             Config(128, 128, 128, 8, 3, "tma"), Config(256, 64, 64, 8, 3, "tma"), Config(128, 128, 64, 8, 4, "tma")]
# "tma-row": the pixels of a program are BLOCK_M columns of one row, so the box in shared memory is the
# wgmma's operand as it is (the 16-column rectangles of "tma" go through registers): 64-169 registers
# (m128n64: 67, three programs per SM), no spills (triton 3.9, sm_90, bf16; fused with a batch norm, the
# tiles from 64x128 up spill 24-700 bytes). Rows wider than the map leave columns idle: 64-wide tiles suit
# narrow maps.
_HALF_TMA_ROW = [Config(128, 128, 64, 8, 3, "tma-row"), Config(128, 128, 64, 8, 4, "tma-row"),
                 Config(64, 128, 64, 4, 4, "tma-row"), Config(128, 256, 64, 8, 3, "tma-row"),
                 Config(64, 256, 64, 8, 3, "tma-row"), Config(128, 64, 64, 8, 3, "tma-row")]
# The 16-bit weight gradient has only the "channels" kernel: the one with rows of output fields was
# 10-30x slower at every GER-UNet layer on an H200 (benchmarks/results/h200-2026-11-29b/sweep-bf16.md).
_HALF_CHANNELS = [Config(128, 128, 64, 8, 3, "channels"), Config(128, 128, 32, 8, 3, "channels"),
                  Config(128, 64, 64, 8, 3, "channels")]
# Wider tiles: more MMA work per byte loaded, for the layers of 91 and 181 fields (728 and 1448 rows).
_HALF_CHANNELS_WIDE = [Config(128, 256, 64, 8, 3, "channels"), Config(256, 128, 64, 8, 3, "channels")]
# 16 columns suit lifting layers (3 input channels: a 128-column tile is 2% full).
_HALF_LIFTING_CHANNELS = [Config(128, 16, 64, 4, 3, "channels"), Config(256, 16, 64, 8, 3, "channels")]
_HALF_CHANNELS_TMA = [Config(128, 128, 64, 8, 3, "channels-tma"), Config(128, 64, 64, 8, 3, "channels-tma"),
                      Config(128, 128, 32, 8, 4, "channels-tma"), Config(128, 256, 64, 8, 3, "channels-tma"),
                      Config(128, 128, 128, 8, 3, "channels-tma"), Config(64, 128, 64, 4, 3, "channels-tma"),
                      Config(256, 128, 64, 8, 3, "channels-tma")]
# "channels-tma-row": a reduction block is BLOCK_K pixels of one row, so dy's box is the wgmma's A
# operand as it is: 64-219 registers, no spills.
_HALF_CHANNELS_TMA_ROW = [Config(m, n, k, 8, stages, "channels-tma-row") for m, n, k, stages in
                          [(128, 128, 64, 3), (128, 64, 64, 3), (128, 256, 64, 3), (128, 128, 32, 4), (256, 128, 64, 3),
                           (128, 128, 64, 4)]]
_FLOAT32_FIELDS = [Config(128, 64, 16, 8, 3, "fields"), Config(64, 64, 32, 8, 3, "fields")]
CONFIGS: dict[str, dict[str, list[Config]]] = {
    "half": {"forward": _HALF_PIXEL_GEMM + _HALF_FIELDS + _HALF_TMA + _HALF_TMA_ROW + _HALF_LIFTING_TAPS,
             "input_grad": _HALF_PIXEL_GEMM + _HALF_FIELDS + _HALF_TMA + _HALF_TMA_ROW,
             "weight_grad": _HALF_CHANNELS + _HALF_CHANNELS_WIDE + _HALF_LIFTING_CHANNELS + _HALF_CHANNELS_TMA
             + _HALF_CHANNELS_TMA_ROW},
    "float32": {
        "forward": [Config(128, 64, 16, 8, 3), Config(64, 64, 32, 8, 3), Config(64, 32, 32, 4, 3)]
        + _FLOAT32_FIELDS + _FLOAT32_LIFTING_TAPS,
        "input_grad": [Config(128, 32, 32, 8, 3), Config(64, 64, 32, 8, 3), Config(64, 32, 32, 4, 3)]
        + _FLOAT32_FIELDS,
        "weight_grad": _WEIGHT_GRAD + [Config(128, 64, 16, 8, 3, "channels")],
    },
}


# Configs whose kernels have not yet been run on a GPU (written and checked in the interpreter and by
# ahead-of-time compilation for sm_90 only): the sweep (benchmarks/gpu_sweep.py) times them and checks
# their results against cuDNN, a default-config table may name them once it has, and tests and
# GER_KERNELS_TRITON_CONFIG can force them; the tuner times them only with GER_KERNELS_TRITON_UNVERIFIED=1.
# A list leaves this set once a GPU sweep has checked it.
UNVERIFIED = frozenset(c.name for c in _HALF_FIELDS + _HALF_TMA + _HALF_TMA_ROW + _HALF_LIFTING_TAPS
                       + _HALF_CHANNELS_WIDE + _HALF_LIFTING_CHANNELS + _HALF_CHANNELS_TMA + _HALF_CHANNELS_TMA_ROW
                       + _FLOAT32_FIELDS + _FLOAT32_LIFTING_TAPS)
UNVERIFIED_ENV = "GER_KERNELS_TRITON_UNVERIFIED"

# 16-bit configs whose kernel spills registers on sm_90 when a batch norm is fused into it (the "+bn"
# rows of benchmarks/results/triton-aot-sm90.md, which tests/triton/test_triton_aot.py holds this set
# to): a fused kernel takes the plain kernel's default config only outside this set, and is never
# tuned over them.
FUSED_SPILLS = {
    "forward": frozenset({
        "m128n256k64w8s3-tma", "m256n128k64w8s3-tma", "m64n128k64w4s4-tma", "m128n128k64w8s3-tma-row",
        "m128n128k64w8s4-tma-row", "m64n128k64w4s4-tma-row", "m128n256k64w8s3-tma-row", "m64n256k64w8s3-tma-row"}),
    "input_grad": frozenset({
        "m128n128k64w8s3-tma", "m128n256k64w8s3-tma", "m256n128k64w8s3-tma", "m128n128k32w8s4-tma",
        "m256n64k64w8s3-tma", "m128n128k64w8s4-tma", "m128n128k64w8s3-tma-row", "m128n128k64w8s4-tma-row",
        "m128n256k64w8s3-tma-row"}),
    "weight_grad": frozenset({
        "m128n256k64w8s3-channels", "m256n128k64w8s3-channels", "m128n256k64w8s3-channels-tma",
        "m256n128k64w8s3-channels-tma", "m128n256k64w8s3-channels-tma-row", "m256n128k64w8s3-channels-tma-row"}),
}


def _fused(key: tuple) -> bool:
    """Whether problem class ``key`` is that of a kernel with a fused batch norm."""
    return bool(key) and key[-1] == FUSED_TAG


def tunable(kind: str, family: str, fused: bool = False) -> list[Config]:
    """The configs the tuner times for ``family`` in dtype class ``kind`` (``fused``: with a batch
    norm fused, so not those of ``FUSED_SPILLS``): those run on a GPU before, and the ``UNVERIFIED``
    ones too when ``GER_KERNELS_TRITON_UNVERIFIED=1``."""
    everything = os.environ.get(UNVERIFIED_ENV) == "1"
    spilling = FUSED_SPILLS[family] if fused else frozenset()
    return [c for c in CONFIGS[kind][family] if (everything or c.name not in UNVERIFIED) and c.name not in spilling]


def dtype_class(dtype: torch.dtype) -> str:
    """The key of ``CONFIGS`` for tensors of ``dtype``: "float32" or "half"."""
    return "float32" if dtype == torch.float32 else "half"


def size_bucket(n) -> int:
    """The power of two at or above ``n``: nearby sizes share a tuning entry. By comparisons, so that
    under ``torch.compile`` with dynamic shapes it guards on the bucket instead of failing on a
    symbolic size."""
    bucket = 1
    while bucket < n:
        bucket *= 2
    return bucket


def forced_config(family: str, kind: str) -> Config | None:
    """The config ``GER_KERNELS_TRITON_CONFIG`` forces for ``family`` in dtype class ``kind``,
    or None when unset."""
    value = os.environ.get(FORCE_ENV, "").strip()
    if not value:
        return None
    configs = CONFIGS[kind][family]
    if value.isdigit():
        index = int(value)
        if index >= len(configs):
            raise ValueError(f"{FORCE_ENV}={value}: {family} ({kind}) has configs 0..{len(configs) - 1}")
        return configs[index]
    known = {c.name for lists in CONFIGS.values() for cs in lists.values() for c in cs}
    names = [name.strip() for name in value.split(",")]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"{FORCE_ENV}: unknown config names {unknown}; expected an index or names among "
                         f"{sorted(known)}")
    return next((c for c in configs if c.name in names), configs[0])


def cache_path() -> pathlib.Path:
    """``triton_tuning.json`` in the user cache directory."""
    root = os.environ.get("GER_KERNELS_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ger_kernels")
    return pathlib.Path(root) / "triton_tuning.json"


def entry(family: str, kind: str, *keys: tuple) -> str:
    """The name of a table entry: ``family|kind|`` and the parts of ``keys``, joined by ``|``."""
    return "|".join(map(str, (family, kind) + tuple(part for key in keys for part in key)))


def arch_name(device: torch.device) -> str:
    """``sm<major><minor>`` of a CUDA device (``sm90`` for H100/H200), ``cpu`` otherwise."""
    if device.type != "cuda":
        return "cpu"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def defaults_path(arch: str, directory: pathlib.Path | None = None) -> pathlib.Path:
    """The default-config table of GPU architecture ``arch`` (e.g. ``sm90``)."""
    return (directory or DEFAULTS_DIR) / f"configs_{arch}.json"


def read_defaults(arch: str, directory: pathlib.Path | None = None) -> dict[str, dict]:
    """The ``entries`` of ``arch``'s default-config table; empty when there is no table."""
    return read_table_entries(defaults_path(arch, directory), "default-config table",
                              lambda e: isinstance(e, dict) and isinstance(e.get("config"), str),
                              "'family|kind|problem class' to {\"config\": name, ...}")


class Tuner:
    """Best config per ``(family, key)``, in memory and in the JSON file at ``path``, with the
    default-config tables in ``defaults_dir`` (default ``DEFAULTS_DIR``) consulted before timing."""

    def __init__(self, path: pathlib.Path | None = None, defaults_dir: pathlib.Path | None = None):
        self._path = path
        self.defaults_dir = defaults_dir
        self.memory: dict[str, str] = {}
        self._defaults: dict[str, dict[str, dict]] = {}

    def default(self, family: str, kind: str, key: tuple, arch: str) -> str | None:
        """The config name ``arch``'s default-config table gives ``family`` for problem class ``key``;
        for a kernel with a fused batch norm (``key`` ends in ``FUSED_TAG``) without an entry of its
        own, the plain kernel's unless that spills fused (``FUSED_SPILLS``)."""
        if arch not in self._defaults:
            self._defaults[arch] = read_defaults(arch, self.defaults_dir)
        table = self._defaults[arch]
        found = table.get(entry(family, kind, key))
        if found is None and _fused(key):
            plain = table.get(entry(family, kind, key[:-1]))
            found = plain if plain and plain["config"] not in FUSED_SPILLS[family] else None
        return found["config"] if found else None

    @property
    def path(self) -> pathlib.Path:
        """The cache file: the one given, else ``cache_path()`` as the environment says now."""
        return self._path or cache_path()

    def _read_file(self) -> dict[str, str]:
        """The file's config names by entry (values that are not names left out)."""
        return {entry: name for entry, name in read_json_object(self.path).items() if isinstance(name, str)}

    def _write_file(self, entry: str, name: str) -> None:
        """Adds one entry to the file (``update_json_object``: locked, atomic)."""
        update_json_object(self.path, {entry: name})

    def choose(self, family: str, kind: str, key: tuple, time_ms: Callable[[Config], float], device: tuple = (),
               arch: str | None = None) -> Config:
        """The forced config, else the cached one for ``device`` (e.g. GPU name and Triton
        version), else the default of architecture ``arch``, else the fastest by
        ``time_ms(config)`` among ``tunable(kind, family)``, for problem class ``key``."""
        configs = CONFIGS[kind][family]
        forced = forced_config(family, kind)
        if forced is not None or interpreting():
            return forced or configs[0]
        by_name = {c.name: c for c in configs}
        cached = entry(family, kind, device, key)
        name = self.memory.get(cached) or self._read_file().get(cached)
        if name not in by_name and arch is not None:
            name = self.default(family, kind, key, arch)
        if name not in by_name:
            name = min(tunable(kind, family, _fused(key)), key=time_ms).name
            self._write_file(cached, name)
        self.memory[cached] = name
        return by_name[name]
