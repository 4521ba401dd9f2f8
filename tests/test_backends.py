import importlib.util
import json

import pytest
import torch

import ger_kernels
from ger_kernels import ops, reference
from ger_kernels.backends import (CPU_CPP_MIN_EXPANDED_BYTES, auto_backend, check_backend_name, layer_paths,
                                  resolve_backend, resolved_backend, resolved_paths)
from ger_kernels.groups import P4M


def test_every_backend_has_a_status_and_reason():
    statuses = ger_kernels.backends()
    assert list(statuses) == list(ger_kernels.BACKENDS) == ["reference", "cpp", "triton"]
    assert statuses["reference"].available
    for status in statuses.values():
        assert isinstance(status.available, bool) and status.reason


def test_cpp_status_follows_the_extension():
    status = ger_kernels.backends()["cpp"]
    assert status.available == ops.has_op("group_conv2d")
    if not ops.extension_loaded():
        assert "ger_kernels._C" in status.reason and "pip install --no-build-isolation -e ." in status.reason


def test_triton_status_follows_the_install():
    status = ger_kernels.backends()["triton"]
    if importlib.util.find_spec("triton") is None:
        assert status == (False, "triton is not installed")


def test_unavailable_backends_are_refused_with_their_reason():
    assert check_backend_name("auto") == "auto"
    for name, status in ger_kernels.backends().items():
        if status.available:
            assert check_backend_name(name) == name
        else:
            with pytest.raises(ValueError, match=f"backend '{name}' is not available: "):
                check_backend_name(name)


def test_auto_runs_the_measured_choice():
    big, small = CPU_CPP_MIN_EXPANDED_BYTES, CPU_CPP_MIN_EXPANDED_BYTES - 1
    assert auto_backend("cpu", big) == ("cpp" if ger_kernels.backends("cpu")["cpp"].available else "reference")
    assert auto_backend("cpu", small) == "reference"
    # no fused GPU kernel has been measured yet: cuDNN on the expanded filter
    assert auto_backend("cuda", big) == "reference"
    wide = torch.empty(64, 64, 8, 3, 3)  # W~ 9.4 MB
    x = torch.empty(1, 512, 4, 4)
    assert resolve_backend("auto", x, wide, P4M) is resolve_backend(auto_backend("cpu", big), x, wide, P4M)


def test_statuses_per_device(monkeypatch):
    cpu, cuda = ger_kernels.backends("cpu"), ger_kernels.backends("cuda")
    assert cpu["reference"].available
    assert cuda["reference"].available == torch.cuda.is_available()
    if ops.has_op("group_conv2d"):
        assert cpu["cpp"].available
        if not torch.cuda.is_available():
            assert not cuda["cpp"].available
    # triton runs CPU tensors only in its interpreter
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not ger_kernels.backends("cpu")["triton"].available
    if importlib.util.find_spec("triton") is not None:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert ger_kernels.backends("cpu")["triton"].available


def test_a_backend_that_cannot_run_on_the_device_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    status = ger_kernels.backends("cpu")["triton"]
    if ger_kernels.backends()["triton"].available:  # triton on a GPU machine, CPU tensors
        with pytest.raises(ValueError, match="backend 'triton' cannot run on cpu tensors: "):
            resolve_backend("triton", torch.empty(1, 8, 3, 3), torch.empty(1, 1, 8, 3, 3), P4M)
    else:
        assert not status.available


@pytest.mark.parametrize("name", ["reference", "cpp", "triton"])
def test_resolved_backends_compute_the_reference(name):
    status = ger_kernels.backends("cpu")[name]
    if not status.available:
        pytest.skip(status.reason)
    x = torch.randn(1, 8, 6, 5)
    w = torch.randn(2, 1, 8, 3, 3)
    out = resolve_backend(name, x, w, P4M)(x, w, None, 1, 1, 1, P4M)
    assert torch.allclose(out, reference.group_conv2d(x, w, None, 1, 1, 1, P4M), atol=1e-5)


def test_resolution_stays_out_of_compiled_graphs(monkeypatch):
    """torch.compile takes the resolved backend as a constant: the status checks, which may ask
    the dispatcher or import triton (graph breaks), are never traced."""
    backends_module = importlib.import_module("ger_kernels.backends")  # the package exports a function of that name

    def reference_status(device_type):
        torch._C._dispatch_has_kernel_for_dispatch_key("ger_kernels::group_conv2d", "CUDA")  # untraceable
        return backends_module.BackendStatus(True, "F.conv2d on the materialized expanded filter")

    monkeypatch.setattr(backends_module, "_reference_status", reference_status)
    backends_module._statuses.cache_clear()
    try:
        x, w = torch.randn(1, 8, 6, 5), torch.randn(2, 1, 8, 3, 3)
        compiled = torch.compile(lambda x: ger_kernels.group_conv2d(x, w, padding=1, backend="reference"),
                                 fullgraph=True, backend="eager")
        assert torch.equal(compiled(x), reference.group_conv2d(x, w, None, 1, 1, 1, P4M))
    finally:
        backends_module._statuses.cache_clear()


def test_resolved_backend_names_what_runs():
    assert resolved_backend("reference", "cpu", 1) == "reference"
    assert resolved_backend("auto", "cpu", CPU_CPP_MIN_EXPANDED_BYTES - 1) == "reference"
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        resolved_backend("fast", "cpu", 1)


# ---------------------------------------------------------------- auto: a path per pass (ger_kernels.auto_paths)

def cpu_table(tmp_path, monkeypatch, problem, paths):
    """A CPU path table giving ``problem``'s passes ``paths`` (None: no entry), consulted by ``auto``."""
    from ger_kernels import auto_paths

    entries = auto_paths.pass_entries(auto_paths.pass_classes(problem))
    table = {"entries": {e: {"path": p, "measured": "a test"} for e, p in zip(entries, paths) if p is not None}}
    auto_paths.table_path("cpu", tmp_path).write_text(json.dumps(table))
    monkeypatch.setattr(auto_paths, "CHOOSER", auto_paths.PathChooser(tmp_path / "cache.json", tmp_path))


def p4m_layer(dtype=torch.float64, c_in=2, c_out=3):
    from ger_kernels.auto_paths import ConvProblem

    x = torch.randn(2, c_in * 8, 6, 5, dtype=dtype, requires_grad=True)
    w = torch.randn(c_out, c_in, 8, 3, 3, dtype=dtype, requires_grad=True)
    b = torch.randn(c_out, dtype=dtype, requires_grad=True)
    return (x, w, b), ConvProblem(dtype, tuple(x.shape), tuple(w.shape), 1, 1, 1, 8, False)


@pytest.fixture
def cpp_available():
    if not ger_kernels.backends("cpu")["cpp"].available:
        pytest.skip(ger_kernels.backends("cpu")["cpp"].reason)


def test_auto_runs_each_pass_on_the_path_of_the_table(tmp_path, monkeypatch, cpp_available):
    (x, w, b), problem = p4m_layer()
    cpu_table(tmp_path, monkeypatch, problem, ["cpp", "reference", "cpp"])
    assert layer_paths("auto", x, w, P4M, 1, 1, 1) == {
        "forward": ("cpp", "table cpu (a test)"), "input_grad": ("reference", "table cpu (a test)"),
        "weight_grad": ("cpp", "table cpu (a test)")}
    out = ger_kernels.group_conv2d(x, w, b, padding=1)
    assert out.grad_fn.name().startswith("GeneratedBackwardFor_ger_kernels_paths_group_conv2d")
    expected = reference.group_conv2d(x, w, b, padding=1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    dy = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (x, w, b), dy), torch.autograd.grad(expected, (x, w, b), dy)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # another shape has no entry: the CPU rule; a named backend ignores the table
    assert set(layer_paths("auto", x[:1], w, P4M, 1, 1, 1).values()) == {
        ("reference", "auto on cpu without a measurement: cpp where W~ has >= 4 MiB, else reference")}
    assert set(layer_paths("reference", x, w, P4M, 1, 1, 1).values()) == {("reference", "backend='reference'")}


def test_one_path_for_every_pass_runs_that_backend_itself(tmp_path, monkeypatch, cpp_available):
    (x, w, b), problem = p4m_layer()
    cpu_table(tmp_path, monkeypatch, problem, ["cpp", "cpp", "cpp"])
    assert resolve_backend("auto", x, w, P4M, 1, 1, 1) is resolve_backend("cpp", x, w, P4M)
    assert resolved_paths("auto", "cpu", 1, None, None) == ("reference",) * 3  # no classes: the CPU rule


def test_describe_model_names_each_layers_paths(tmp_path, monkeypatch, cpp_available):
    from ger_kernels.backends import describe_model, format_paths
    from ger_kernels.nn import P4MConvP4M, P4MConvZ2

    model = torch.nn.Sequential(P4MConvZ2(3, 2, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Sequential(P4MConvP4M(2, 3, 3, padding=1)),
                                P4MConvP4M(3, 3, 3, padding=1, backend="cpp")).double()
    _, problem = p4m_layer()
    cpu_table(tmp_path, monkeypatch, problem, ["reference", "cpp", None])
    rows = describe_model(model, torch.randn(2, 3, 6, 5, dtype=torch.float64))
    rule = ("reference", "auto on cpu without a measurement: cpp where W~ has >= 4 MiB, else reference")
    assert rows == [
        {"layer": "0", "input": (2, 3, 6, 5), "dtype": "float64", "forward": rule, "input_grad": rule,
         "weight_grad": rule},
        {"layer": "2.0", "input": (2, 16, 6, 5), "dtype": "float64", "forward": ("reference", "table cpu (a test)"),
         "input_grad": ("cpp", "table cpu (a test)"), "weight_grad": rule},
        {"layer": "3", "input": (2, 24, 6, 5), "dtype": "float64", **dict.fromkeys(
            ("forward", "input_grad", "weight_grad"), ("cpp", "backend='cpp'"))}]
    text = format_paths(rows).splitlines()
    assert text[2].split() == ["2.0", "2x16x6x5", "float64", "reference", "[2]", "cpp", "[2]", "reference", "[1]"]
    assert text[-3:] == ["[1] " + rule[1], "[2] table cpu (a test)", "[3] backend='cpp'"]
    assert not any(module._forward_pre_hooks for module in model.modules())


def test_auto_paths_compile_with_dynamic_shapes(tmp_path, monkeypatch, cpp_available):
    """The table lookup is a compile-time constant per problem class (a dynamic size guards on its
    power-of-two bucket): a shape of another class recompiles and takes its own paths."""
    from ger_kernels import conv_passes
    from ger_kernels.nn import P4MConvP4M

    calls = set()
    for name in conv_passes.PASSES:
        def spy(path, *args, name=name, original=getattr(conv_passes, name)):
            calls.add((name, path))
            return original(path, *args)

        monkeypatch.setattr(conv_passes, name, spy)
    _, problem = p4m_layer(torch.float32)
    cpu_table(tmp_path, monkeypatch, problem, ["cpp", "reference", "cpp"])
    layer = P4MConvP4M(2, 3, 3, padding=1)
    torch._dynamo.reset()  # compile tests earlier in this process can leave the group order dynamic
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend="aot_eager")
    mixed = {("forward", "cpp"), ("input_grad", "reference"), ("weight_grad", "cpp")}
    for batch, paths in ((2, mixed), (1, set()), (7, set())):  # the table's class, then two without an entry
        calls.clear()
        x = torch.randn(batch, 16, 6, 5, requires_grad=True)
        out = compiled(x)
        out.sum().backward()
        assert calls == paths, batch
        torch.testing.assert_close(out, layer(x), rtol=0, atol=0)
