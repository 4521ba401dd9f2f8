import json

import pytest

pytest.importorskip("triton")

from ger_kernels.triton import tuning  # noqa: E402
from ger_kernels.triton.tuning import CONFIGS, FORCE_ENV, Config, Tuner  # noqa: E402


@pytest.fixture(autouse=True)
def compiled(monkeypatch):
    """Tuning as on a GPU: no forced config, not the interpreter."""
    monkeypatch.delenv(FORCE_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_configs_fit_the_kernels():
    for kind, lists in CONFIGS.items():
        for family, configs in lists.items():
            assert 2 <= len(configs) <= 5 and len({c.name for c in configs}) == len(configs)
            for c in configs:
                if family != "weight_grad":  # channel blocks must hold whole orientation groups
                    assert c.block_k % 8 == 0
                assert min(c.block_m, c.block_n, c.block_k) >= 16 and c.num_warps in (4, 8)


def test_forced_config(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "1")
    assert tuning.forced_config("forward", "half") == CONFIGS["half"]["forward"][1]
    names = {CONFIGS["half"]["forward"][2].name, CONFIGS["float32"]["weight_grad"][3].name}
    monkeypatch.setenv(FORCE_ENV, " , ".join(sorted(names)))
    for kind, lists in CONFIGS.items():
        for family, configs in lists.items():
            named = [c for c in configs if c.name in names]
            assert tuning.forced_config(family, kind) == (named[0] if named else configs[0])
    assert tuning.forced_config("forward", "half") == CONFIGS["half"]["forward"][2]
    monkeypatch.setenv(FORCE_ENV, "7")
    with pytest.raises(ValueError, match=r"GER_KERNELS_TRITON_CONFIG=7: forward \(half\) has configs 0..3"):
        tuning.forced_config("forward", "half")
    monkeypatch.setenv(FORCE_ENV, "m1n1k1w1s1")
    with pytest.raises(ValueError, match=r"unknown config names \['m1n1k1w1s1'\]"):
        tuning.forced_config("forward", "half")
    monkeypatch.delenv(FORCE_ENV)
    assert tuning.forced_config("forward", "half") is None


def test_tunes_once_and_caches_on_disk(tmp_path):
    path = tmp_path / "cache" / "triton_tuning.json"
    configs = CONFIGS["half"]["forward"]
    timed = []

    def time_ms(config: Config) -> float:
        timed.append(config)
        return 1.0 if config == configs[2] else 2.0

    tuner = Tuner(path)
    assert tuner.choose("forward", "half", ("H100", 1024), time_ms) == configs[2]
    assert timed == configs
    assert tuner.choose("forward", "half", ("H100", 1024), time_ms) == configs[2]
    assert len(timed) == len(configs)  # remembered in memory
    assert json.loads(path.read_text()) == {"forward|half|H100|1024": configs[2].name}
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind

    def never(config):
        raise AssertionError("a second process must not tune again")

    assert Tuner(path).choose("forward", "half", ("H100", 1024), never) == configs[2]
    other = Tuner(path).choose("forward", "half", ("H100", 2048), lambda c: 1.0 if c == configs[0] else 2.0)
    assert other == configs[0]
    assert len(json.loads(path.read_text())) == 2  # entries merge


def test_forced_and_interpreted_never_time(tmp_path, monkeypatch):
    def never(config):
        raise AssertionError("timed")

    monkeypatch.setenv(FORCE_ENV, "2")
    assert Tuner(tmp_path / "t.json").choose("input_grad", "float32", (), never) == CONFIGS["float32"]["input_grad"][2]
    monkeypatch.delenv(FORCE_ENV)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert Tuner(tmp_path / "t.json").choose("input_grad", "float32", (), never) == CONFIGS["float32"]["input_grad"][0]
    assert not (tmp_path / "t.json").exists()


def test_cache_path(monkeypatch, tmp_path):
    monkeypatch.setenv("GER_KERNELS_CACHE_DIR", str(tmp_path))
    assert tuning.cache_path() == tmp_path / "triton_tuning.json"
    monkeypatch.delenv("GER_KERNELS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning.cache_path() == tmp_path / "xdg" / "ger_kernels" / "triton_tuning.json"


def test_size_bucket():
    assert [tuning.size_bucket(n) for n in (1, 2, 3, 64, 65, 1000)] == [1, 2, 4, 64, 128, 1024]
