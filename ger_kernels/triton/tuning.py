"""Launch configurations of the Triton kernels and the choice among them.

Each kernel family ("forward", "input_grad", "weight_grad") has, per dtype class
("float32" or "half"), a short list of named ``Config`` s (tile sizes of its implicit GEMM,
warps, pipeline stages). A problem class (the ``key``: dtype, group, filter, stride and
power-of-two buckets of the GEMM sizes) is tuned once: every config is timed, the fastest
is kept in memory and in a JSON file ``triton_tuning.json`` under the cache directory
(``$GER_KERNELS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ger_kernels``, else
``~/.cache/ger_kernels``), written atomically, so a second process does not tune again. Callers put the GPU name and Triton version in the key.

``GER_KERNELS_TRITON_CONFIG`` forces configs, for tests and reproducible runs: an index
(that config in every list), or comma-separated names (each forces the lists holding it;
the other lists use their first config). The interpreter (``TRITON_INTERPRET=1``)
never times anything: it uses the forced or the first config.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Callable, NamedTuple

import torch

from ger_kernels._io import write_text_atomically
from ger_kernels.triton import interpreting

__all__ = ["Config", "CONFIGS", "FORCE_ENV", "Tuner", "cache_path", "dtype_class", "forced_config", "size_bucket"]

FORCE_ENV = "GER_KERNELS_TRITON_CONFIG"


class Config(NamedTuple):
    """Tiles ``BLOCK_M x BLOCK_N`` of the GEMM result, ``BLOCK_K`` of its reduction."""
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    @property
    def name(self) -> str:
        return f"m{self.block_m}n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}"

    def meta(self) -> dict:
        """Keyword arguments of a launch: the tile constexprs, warps and stages."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k,
                "num_warps": self.num_warps, "num_stages": self.num_stages}


# forward and input_grad: M = pixels, N = channels, K = channels of one tap (a multiple of the
# group order, which the kernels rely on; 16 suits lifting layers with few input channels).
# weight_grad: M = output fields, N = base input channels, K = pixels.
# float32 runs on FMA units (IEEE) and needs smaller tiles per thread than the tensor-core
# dtypes. Every config compiles for sm_90 without register spills (ger_kernels.triton.aot).
_HALF_PIXEL_GEMM = [Config(128, 64, 32, 8, 3), Config(64, 128, 32, 8, 3), Config(64, 64, 32, 4, 3),
                    Config(64, 64, 16, 4, 4)]
_WEIGHT_GRAD = [Config(64, 64, 32, 4, 3), Config(128, 64, 32, 8, 3), Config(64, 128, 32, 8, 3),
                Config(64, 32, 32, 4, 3)]
CONFIGS: dict[str, dict[str, list[Config]]] = {
    "half": {"forward": _HALF_PIXEL_GEMM, "input_grad": _HALF_PIXEL_GEMM, "weight_grad": _WEIGHT_GRAD},
    "float32": {
        "forward": [Config(128, 64, 16, 8, 3), Config(64, 64, 32, 8, 3), Config(64, 32, 32, 4, 3)],
        "input_grad": [Config(128, 32, 32, 8, 3), Config(64, 64, 32, 8, 3), Config(64, 32, 32, 4, 3)],
        "weight_grad": _WEIGHT_GRAD,
    },
}


def dtype_class(dtype: torch.dtype) -> str:
    """The key of ``CONFIGS`` for tensors of ``dtype``: "float32" or "half"."""
    return "float32" if dtype == torch.float32 else "half"


def size_bucket(n: int) -> int:
    """The power of two at or above ``n``: nearby sizes share a tuning entry."""
    return 1 << max(n - 1, 0).bit_length()


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


class Tuner:
    """Best config per ``(family, key)``, in memory and in the JSON file at ``path``."""

    def __init__(self, path: pathlib.Path | None = None):
        self.path = path or cache_path()
        self.memory: dict[str, str] = {}

    @staticmethod
    def _entry(family: str, key: tuple) -> str:
        return "|".join(map(str, (family,) + tuple(key)))

    def _read_file(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _write_file(self, entry: str, name: str) -> None:
        """Adds one entry to the file: read, merge, write atomically."""
        table = self._read_file()
        table[entry] = name
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomically(str(self.path), json.dumps(table, indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only cache directory only costs tuning again in the next process

    def choose(self, family: str, kind: str, key: tuple, time_ms: Callable[[Config], float]) -> Config:
        """The forced config, else the cached one, else the fastest by ``time_ms(config)``,
        among ``CONFIGS[kind][family]``."""
        configs = CONFIGS[kind][family]
        forced = forced_config(family, kind)
        if forced is not None or interpreting():
            return forced or configs[0]
        by_name = {c.name: c for c in configs}
        entry = self._entry(family, (kind,) + tuple(key))
        name = self.memory.get(entry) or self._read_file().get(entry)
        if name not in by_name:
            name = min(configs, key=time_ms).name
            self._write_file(entry, name)
        self.memory[entry] = name
        return by_name[name]
