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


def test_configs_fit_the_kernels(monkeypatch):
    monkeypatch.delenv(tuning.UNVERIFIED_ENV, raising=False)
    for kind, lists in CONFIGS.items():
        for family, configs in lists.items():
            # the sweep times every config; a first call on a GPU times the verified ones only
            assert 2 <= len(configs) <= 32 and len({c.name for c in configs}) == len(configs)
            assert 1 <= len(tuning.tunable(kind, family)) <= 20 and tuning.tunable(kind, family, fused=True)
            assert tuning.FUSED_SPILLS[family] <= {c.name for c in CONFIGS["half"][family]}
            for c in configs:
                if family != "weight_grad":  # channel blocks must hold whole orientation groups
                    assert c.block_k % 8 == 0
                assert min(c.block_m, c.block_n, c.block_k) >= 16 and c.num_warps in (4, 8)
                # the "channels" weight gradient: tiles of whole fields (S <= 8 rows, S_in <= 8 columns)
                assert c.variant == "" or (c.variant.startswith("channels") and family == "weight_grad"
                                           and c.block_m % 8 == 0 and c.block_n % 8 == 0
                                           and (c.variant == "channels" or c.block_k % 16 == 0)) or (
                    # "fields" and "tma": columns of whole fields; "tma": rectangles of 16-pixel rows
                    c.variant in ("fields", "tma", "tma-row") and family != "weight_grad" and c.block_n % 8 == 0
                    and (c.variant == "fields" or (kind == "half" and c.block_m % 16 == 0))) or (
                    c.variant == "taps" and family == "forward")  # the plain kernel's tiles


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
    last = len(CONFIGS["half"]["forward"]) - 1
    monkeypatch.setenv(FORCE_ENV, str(last + 1))
    message = rf"GER_KERNELS_TRITON_CONFIG={last + 1}: forward \(half\) has configs 0..{last}"
    with pytest.raises(ValueError, match=message):
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
    assert timed == tuning.tunable("half", "forward")
    assert tuner.choose("forward", "half", ("H100", 1024), time_ms) == configs[2]
    assert len(timed) == len(tuning.tunable("half", "forward"))  # remembered in memory
    assert json.loads(path.read_text()) == {"forward|half|H100|1024": configs[2].name}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.lock"]  # no temporary file

    def never(config):
        raise AssertionError("a second process must not tune again")

    assert Tuner(path).choose("forward", "half", ("H100", 1024), never) == configs[2]
    other = Tuner(path).choose("forward", "half", ("H100", 2048), lambda c: 1.0 if c == configs[0] else 2.0)
    assert other == configs[0]
    assert len(json.loads(path.read_text())) == 2  # entries merge


def test_unverified_configs_are_timed_only_on_request(tmp_path, monkeypatch):
    """Configs never run on a GPU are left out of tuning unless GER_KERNELS_TRITON_UNVERIFIED=1;
    a default-config table that names one (the sweep checked it on a GPU) is followed."""
    monkeypatch.delenv(tuning.UNVERIFIED_ENV, raising=False)
    configs = CONFIGS["half"]["forward"]
    unverified = [c for c in configs if c.name in tuning.UNVERIFIED]
    assert unverified and len(unverified) < len(configs)
    timed = []
    fastest = unverified[0]
    time_ms = lambda c: timed.append(c) or (0.5 if c == fastest else 1.0)  # noqa: E731
    chosen = Tuner(tmp_path / "a.json").choose("forward", "half", ("k",), time_ms)
    assert chosen.name not in tuning.UNVERIFIED and not set(timed) & set(unverified)
    monkeypatch.setenv(tuning.UNVERIFIED_ENV, "1")
    timed.clear()
    assert Tuner(tmp_path / "b.json").choose("forward", "half", ("k",), time_ms) == fastest
    assert timed == configs
    monkeypatch.delenv(tuning.UNVERIFIED_ENV)
    (tmp_path / "configs_sm90.json").write_text(json.dumps(
        {"entries": {tuning.entry("forward", "half", ("k",)): {"config": fastest.name}}}))

    def never(config):
        raise AssertionError("timed")

    assert Tuner(tmp_path / "c.json", defaults_dir=tmp_path).choose("forward", "half", ("k",), never,
                                                                    arch="sm90") == fastest


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


def write_defaults(directory, arch, entries):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"configs_{arch}.json").write_text(json.dumps({"arch": arch, "entries": entries}))


def test_default_table_is_used_without_timing(tmp_path):
    configs = CONFIGS["half"]["forward"]
    write_defaults(tmp_path / "defaults", "sm90", {"forward|half|torch.bfloat16|8|1024": {"config": configs[1].name}})
    tuner = Tuner(tmp_path / "cache.json", defaults_dir=tmp_path / "defaults")

    def never(config):
        raise AssertionError("a problem class of the default table must not be timed")

    assert tuner.choose("forward", "half", ("torch.bfloat16", 8, 1024), never, ("H200", "3.6"), "sm90") == configs[1]
    assert not (tmp_path / "cache.json").exists()  # the table is not copied into the tuning cache
    # another architecture, family, dtype class or problem class has no entry: timed and cached
    timed = []
    assert tuner.choose("forward", "half", ("torch.bfloat16", 8, 1024), lambda c: timed.append(c) or 1.0,
                        ("A100", "3.6"), "sm80") == configs[0]
    assert timed == tuning.tunable("half", "forward")
    assert tuner.choose("input_grad", "half", ("torch.bfloat16", 8, 1024), lambda c: 1.0, (), "sm90") \
        == CONFIGS["half"]["input_grad"][0]
    assert set(json.loads((tmp_path / "cache.json").read_text())) == {
        "forward|half|A100|3.6|torch.bfloat16|8|1024", "input_grad|half|torch.bfloat16|8|1024"}


def test_tuning_cache_wins_over_the_default_table(tmp_path):
    configs = CONFIGS["half"]["weight_grad"]
    write_defaults(tmp_path, "sm90", {"weight_grad|half|k": {"config": configs[1].name}})
    (tmp_path / "cache.json").write_text(json.dumps({"weight_grad|half|H200|k": configs[2].name}))
    assert Tuner(tmp_path / "cache.json", tmp_path).choose("weight_grad", "half", ("k",), None, ("H200",), "sm90") \
        == configs[2]


def test_a_fused_kernel_takes_its_own_default_else_the_plain_kernels(tmp_path):
    configs = CONFIGS["half"]["forward"]
    plain, fused = ("torch.bfloat16", 8, 1024), ("torch.bfloat16", 8, 1024, tuning.FUSED_TAG)
    write_defaults(tmp_path, "sm90", {"forward|half|torch.bfloat16|8|1024": {"config": configs[1].name},
                                      "forward|half|torch.bfloat16|8|2048|bn": {"config": configs[2].name}})
    tuner = Tuner(tmp_path / "cache.json", tmp_path)
    never = None  # a table entry is never timed
    assert tuner.choose("forward", "half", fused, never, (), "sm90") == configs[1]
    assert tuner.choose("forward", "half", ("torch.bfloat16", 8, 2048, "bn"), never, (), "sm90") == configs[2]
    timed = []  # the fused entry is its own: the plain kernel of that class has none
    assert tuner.choose("forward", "half", ("torch.bfloat16", 8, 2048), lambda c: timed.append(c) or 1.0,
                        (), "sm90") == configs[0] and timed
    assert tuner.choose("forward", "half", plain, never, (), "sm90") == configs[1]


def test_a_fused_kernel_never_takes_a_config_that_spills_fused(tmp_path, monkeypatch):
    """A plain default whose fused kernel spills (FUSED_SPILLS) is not the fused kernel's: it is
    timed over the configs that fit fused."""
    monkeypatch.setenv(tuning.UNVERIFIED_ENV, "1")
    configs = CONFIGS["half"]["forward"]
    monkeypatch.setitem(tuning.FUSED_SPILLS, "forward", frozenset({configs[1].name, configs[2].name}))
    write_defaults(tmp_path, "sm90", {"forward|half|torch.bfloat16|8|1024": {"config": configs[1].name}})
    tuner = Tuner(tmp_path / "cache.json", tmp_path)
    assert tuner.choose("forward", "half", ("torch.bfloat16", 8, 1024), None, (), "sm90") == configs[1]
    timed = []
    fastest = lambda c: timed.append(c) or (0.5 if c == configs[2] else 1.0 if c == configs[3] else 2.0)  # noqa: E731
    assert tuner.choose("forward", "half", ("torch.bfloat16", 8, 1024, "bn"), fastest, (), "sm90") == configs[3]
    assert timed == [c for c in configs if c not in configs[1:3]] == tuning.tunable("half", "forward", fused=True)
    assert len(tuning.tunable("half", "forward")) == len(configs)


def test_default_naming_a_config_no_longer_listed_is_timed(tmp_path):
    write_defaults(tmp_path, "sm90", {"forward|float32|k": {"config": "m1n1k1w1s1"}})
    configs = CONFIGS["float32"]["forward"]
    chosen = Tuner(tmp_path / "cache.json", tmp_path).choose("forward", "float32", ("k",),
                                                             lambda c: 1.0 if c == configs[1] else 2.0, (), "sm90")
    assert chosen == configs[1]


def test_invalid_default_table_is_a_clear_error(tmp_path):
    (tmp_path / "configs_sm90.json").write_text("{")
    with pytest.raises(ValueError, match=r"configs_sm90.json is not valid JSON"):
        tuning.read_defaults("sm90", tmp_path)
    write_defaults(tmp_path, "sm90", {"forward|half|k": "m64n64k32w4s3"})
    with pytest.raises(ValueError, match=r"configs_sm90.json needs an object 'entries'"):
        tuning.read_defaults("sm90", tmp_path)
    assert tuning.read_defaults("sm75", tmp_path) == {}


@pytest.mark.parametrize("arch", ["sm90", "sm80"])
def test_shipped_default_tables_name_listed_configs(arch):
    """The checked-in tables parse and every entry names a config of its family's list."""
    table = json.loads(tuning.defaults_path(arch).read_text())
    assert table["arch"] == arch and table["note"]
    for name, found in tuning.read_defaults(arch).items():
        family, kind = name.split("|")[:2]
        assert found["config"] in {c.name for c in CONFIGS[kind][family]}, name


def test_arch_name():
    import torch

    assert tuning.arch_name(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("content", ["[]", "null", '"text"', '{"forward|half|H100|1024": ["m64n64k32w4s3"]}'])
def test_a_cache_file_of_the_wrong_json_types_is_tuned_over(tmp_path, content):
    path = tmp_path / "triton_tuning.json"
    path.write_text(content)
    configs = CONFIGS["half"]["forward"]
    tuner = Tuner(path)
    assert tuner.choose("forward", "half", ("H100", 1024), lambda c: 1.0 if c == configs[1] else 2.0) == configs[1]
    assert json.loads(path.read_text())["forward|half|H100|1024"] == configs[1].name


def test_a_default_table_whose_config_is_not_a_name_is_a_clear_error(tmp_path):
    tuning.defaults_path("sm90", tmp_path).write_text(json.dumps({"entries": {"forward|half|x": {"config": [1]}}}))
    with pytest.raises(ValueError, match="needs an object 'entries' mapping"):
        tuning.read_defaults("sm90", tmp_path)


def test_the_cache_file_follows_the_environment(tmp_path, monkeypatch):
    tuner = Tuner()
    for folder in ("a", "b"):
        monkeypatch.setenv("GER_KERNELS_CACHE_DIR", str(tmp_path / folder))
        assert tuner.path == tmp_path / folder / "triton_tuning.json"
