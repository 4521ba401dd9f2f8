import copy

import pytest
import torch
from torch import nn

import ger_kernels
from ger_kernels.nn import FusedSequential, GroupBatchNorm2d, P4ConvP4, P4MConvP4M, P4MConvZ2, fused_conv
from ger_kernels.nn import fused
from helpers import max_rel_err


@pytest.fixture
def triton_on_cpu(interpreter):
    """The Triton backend on CPU tensors, in its interpreter."""
    status = ger_kernels.backends("cpu")["triton"]
    if not status.available:
        pytest.skip(status.reason)


def randomized(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, GroupBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
    return module


def block(conv, fields=(2, 3, 3), lifting=False):
    """conv-BN-ReLU-conv-BN, as GER-UNet's blocks (the ReLU fused into the first BN; no conv bias:
    a batch norm after it takes it out, and its gradient is rounding noise)."""
    first = P4MConvZ2 if lifting else conv
    return randomized(FusedSequential(first(fields[0], fields[1], 3, padding=1, bias=False, backend="triton"),
                                      GroupBatchNorm2d(fields[1], conv.group_name, relu=True), nn.Identity(),
                                      conv(fields[1], fields[2], 3, padding=1, bias=False, backend="triton"),
                                      GroupBatchNorm2d(fields[2], conv.group_name)))


def unfused(model):
    """A copy of ``model`` on the reference backend."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "backend"):
            m.backend = "reference"
    return model


def spy_fused_calls(monkeypatch) -> list:
    calls = []
    original = fused._fused
    monkeypatch.setattr(fused, "_fused", lambda *args: calls.append(args[0]) or original(*args))
    return calls


@pytest.mark.parametrize("conv,lifting", [(P4MConvP4M, False), (P4ConvP4, False), (P4MConvP4M, True)],
                         ids=["p4m", "p4", "lifting"])
def test_fused_sequential_equals_the_unfused_modules(triton_on_cpu, monkeypatch, conv, lifting):
    """Two training steps and an eval forward: outputs, every gradient, running statistics and
    batch counts as the same modules on the reference backend; both convolutions ran fused."""
    model = block(conv, lifting=lifting)
    expected_model = unfused(model)
    calls = spy_fused_calls(monkeypatch)
    order = model[0].group.order
    x = torch.randn(2, 2 * (1 if lifting else order), 6, 5) * 2 + 0.5
    for step in range(2):
        out, expected = model(x), expected_model(x)
        grad = torch.randn_like(out)
        out.backward(grad)
        expected.backward(grad)
        assert max_rel_err(out, expected) <= 1e-5, step
    for (name, p), q in zip(model.named_parameters(), expected_model.parameters()):
        assert max_rel_err(p.grad, q.grad) <= 1e-4, name
    for (name, b), c in zip(model.named_buffers(), expected_model.buffers()):
        assert max_rel_err(b.float(), c.float()) <= 1e-5, name
    model.eval()
    expected_model.eval()
    assert max_rel_err(model(x), expected_model(x)) <= 1e-5
    assert calls == [model[0], model[3]] * 3


def test_statistics_reach_the_next_batch_norm(triton_on_cpu, monkeypatch):
    """The conv before a training batch norm computes its statistics, which the batch norm uses
    (its staged path computes none); in eval mode no statistics are computed."""
    model = block(P4MConvP4M)
    seen = []
    original = GroupBatchNorm2d.forward

    def record(self, input, residual=None, relu=None, statistics=None):
        seen.append(statistics is not None)
        return original(self, input, residual, relu, statistics)

    monkeypatch.setattr(GroupBatchNorm2d, "forward", record)
    x = torch.randn(2, 16, 5, 5)
    y, stats = model.forward_with_statistics(x)
    assert seen == [True] and stats is None  # no consumer named: the last conv's statistics are not wanted
    y, stats = model[:4].forward_with_statistics(x, consumer=model[4])
    assert stats.shape == (3, 3) and max_rel_err(stats[1], y.unflatten(1, (3, 8)).mean((0, 2, 3, 4))) <= 1e-5
    model.eval()
    seen.clear()
    model(x)
    assert seen == [False]


def test_other_backends_and_float64_run_unfused(monkeypatch):
    """Elsewhere than on the Triton backend, ``fused_conv`` is ``conv(norm(input))`` with no statistics."""
    calls = spy_fused_calls(monkeypatch)
    conv = P4MConvP4M(2, 3, 3, padding=1, backend="reference").double()
    norm = randomized(GroupBatchNorm2d(2, relu=True)).double()
    expected_norm = copy.deepcopy(norm)
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    out, stats = fused_conv(conv, x, norm, statistics=True)
    assert stats is None and calls == []
    assert torch.equal(out, conv(expected_norm(x)))
    assert torch.equal(norm.running_mean, expected_norm.running_mean)


def test_float64_is_not_fused(triton_on_cpu):
    conv = P4MConvP4M(2, 3, 3, padding=1, backend="triton")
    assert fused.fuses(conv, torch.randn(1, 16, 4, 4))
    assert not fused.fuses(conv, torch.randn(1, 16, 4, 4, dtype=torch.float64))
    conv.backend = "reference"
    assert not fused.fuses(conv, torch.randn(1, 16, 4, 4))


def test_a_batch_norm_that_cannot_be_applied_on_load_runs_itself(triton_on_cpu, monkeypatch):
    """A synchronized batch norm reducing over processes says so; the conv then runs it first."""
    norm = randomized(GroupBatchNorm2d(2, relu=True))
    monkeypatch.setattr(norm, "normalizes_on_load", lambda: False)
    monkeypatch.setattr(norm, "input_normalization", lambda *args: pytest.fail("applied on load"))
    conv = P4MConvP4M(2, 3, 3, padding=1, backend="triton")
    x = torch.randn(2, 16, 5, 5)
    expected = unfused(conv)(copy.deepcopy(norm)(x))
    out, stats = fused_conv(conv, x, norm, statistics=True)
    assert max_rel_err(out, expected) <= 1e-5 and stats.shape == (3, 3)


def test_bad_input_is_checked_before_the_batch_norm_updates(triton_on_cpu):
    conv = P4MConvP4M(2, 3, 3, padding=1, backend="triton")
    norm = GroupBatchNorm2d(2, relu=True)
    with pytest.raises(ValueError, match="input must"):
        fused_conv(conv, torch.randn(2, 15, 5, 5), norm)
    assert norm.num_batches_tracked.item() == 0 and not norm.running_mean.any()


def test_state_dict_is_the_sequentials():
    modules = [P4MConvP4M(2, 3, 3), GroupBatchNorm2d(3, relu=True), nn.Identity(), P4MConvP4M(3, 3, 3)]
    assert FusedSequential(*modules).state_dict().keys() == nn.Sequential(*modules).state_dict().keys()


def test_autocast_computes_the_convolutions_in_the_autocast_dtype(triton_on_cpu, monkeypatch):
    """Under autocast (float16 here: the interpreter's bfloat16 dot is wrong) the fused convs compute
    in float16 with the batch norms' statistics and parameters in float32, as the unfused modules
    do: the same scores within float16 rounding, float32 gradients that agree."""
    calls = spy_fused_calls(monkeypatch)
    model = block(P4MConvP4M)
    expected_model = unfused(model)
    x = torch.randn(2, 16, 6, 5) * 2 + 0.5
    with torch.autocast("cpu", dtype=torch.float16):
        out, expected = model(x), expected_model(x)
    assert out.dtype == expected.dtype == torch.float16 and len(calls) == 2
    assert max_rel_err(out, expected) <= 2e-2
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for (name, p), q in zip(model.named_parameters(), expected_model.parameters()):
        assert p.grad.dtype == torch.float32 and max_rel_err(p.grad, q.grad) <= 5e-2, name


def test_torch_compile_fullgraph(triton_on_cpu):
    """The fused block compiles into one graph (its kernels and backward are custom ops with fake
    kernels) and trains as eager: outputs, gradients and running statistics."""
    model = block(P4MConvP4M)
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 16, 6, 5)
    out, expected = compiled(x), eager(x)
    out.sum().backward()
    expected.sum().backward()
    assert max_rel_err(out, expected) <= 1e-6
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        assert max_rel_err(p.grad, q.grad) <= 1e-5, name
    for (name, b), c in zip(model.named_buffers(), eager.buffers()):
        assert torch.equal(b, c), name


def test_statistics_of_the_wrong_shape_are_an_error():
    norm = GroupBatchNorm2d(2, relu=True)
    x = torch.randn(2, 16, 5, 5)
    with pytest.raises(ValueError, match=r"statistics must be the input's \(count, mean, M2\) per field, a "
                                         r"floating point tensor of shape \(3, 2\) on cpu, got torch.float32 "
                                         r"\(3, 3\) on cpu"):
        norm(x, statistics=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"of shape \(3, 2\) on cpu, got torch.int64"):
        norm(x, statistics=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(3, 2\) on cpu, got torch.float32 \(2, 2\)"):
        norm.input_normalization(x, torch.zeros(2, 2))
    assert norm.num_batches_tracked.item() == 0  # checked before the batch is counted


def train_step_matches_unfused(model, x):
    """One training step of ``model`` (Triton backend) and of its unfused copy: outputs, gradients
    and buffers agree; returns the output."""
    expected_model = unfused(model)
    out, expected = model(x), expected_model(x)
    assert out.shape == expected.shape and max_rel_err(out, expected) <= 1e-5
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for (name, p), q in zip(model.named_parameters(), expected_model.parameters()):
        assert torch.equal(p.grad.isnan(), q.grad.isnan()) and max_rel_err(p.grad.nan_to_num(), q.grad.nan_to_num()) \
            <= 1e-4, name
    for (name, b), c in zip(model.named_buffers(), expected_model.buffers()):
        assert max_rel_err(b.float(), c.float()) <= 1e-5, name
    return out


def test_a_batch_norm_of_other_orientations_runs_before_the_conv(triton_on_cpu):
    """A p4m batch norm before a lifting conv (its 8 channels are planar to the conv) is not applied
    on load: it runs as a module, once."""
    model = randomized(FusedSequential(GroupBatchNorm2d(1, relu=True),
                                       P4MConvZ2(8, 2, 3, padding=1, bias=False, backend="triton"),
                                       GroupBatchNorm2d(2)))
    train_step_matches_unfused(model, torch.randn(2, 8, 4, 4))
    assert model[0].num_batches_tracked.item() == 1


def test_an_empty_batch_gives_the_unfused_zero_gradients(triton_on_cpu):
    model = block(P4MConvP4M)
    train_step_matches_unfused(model, torch.randn(0, 16, 5, 5))
    assert not model[1].weight.grad.isnan().any() and not model[1].weight.grad.any()


def test_subclass_forwards_and_hooks_are_never_skipped(triton_on_cpu, monkeypatch):
    """A conv with a forward of its own (GrouPy's 5-D layout) or with hooks, and a batch norm with
    hooks, run as modules: their forward and hooks run as in nn.Sequential."""
    from ger_kernels.convert import GroupyLayout
    from ger_kernels.convert.groupy import GroupyP4MConvP4M

    calls = spy_fused_calls(monkeypatch)
    groupy = FusedSequential(GroupBatchNorm2d(2, relu=True),
                             GroupyP4MConvP4M(2, 3, 3, padding=1, bias=False, backend="triton"))
    assert isinstance(groupy[1], GroupyLayout)
    assert train_step_matches_unfused(groupy, torch.randn(2, 16, 5, 4)).shape == (2, 3, 8, 5, 4)
    assert calls == []
    model = block(P4MConvP4M)
    seen = []
    model[3].register_forward_hook(lambda *args: seen.append("conv"))
    model[1].register_forward_pre_hook(lambda *args: seen.append("bn"))
    train_step_matches_unfused(model, torch.randn(2, 16, 5, 4))
    assert seen == ["bn", "conv"] * 2 and calls == [model[0]]  # the model, then its unfused copy


def test_statistics_are_computed_only_where_they_are_used(triton_on_cpu, monkeypatch):
    """A batch norm run as a module takes given statistics only on its staged kernels; one applied
    on load always uses them: the convs compute them accordingly."""
    wanted = []
    original = fused._fused
    monkeypatch.setattr(fused, "_fused", lambda *args: wanted.append(args[-1]) or original(*args))
    monkeypatch.setattr(fused, "takes_statistics", lambda x: False)  # as ATen's batch norm on CUDA
    model = block(P4MConvP4M)
    y, stats = model[:4].forward_with_statistics(torch.randn(2, 16, 5, 4), consumer=model[4])
    assert wanted == [True, False] and stats is None


def test_export_keeps_the_childrens_names():
    from collections import OrderedDict

    from ger_kernels.convert import export

    model = FusedSequential(OrderedDict(conv=P4MConvP4M(2, 3, 3, padding=1), norm=GroupBatchNorm2d(3)))
    assert list(export(model).state_dict()) == ["conv.weight", "conv.bias", "norm.weight", "norm.bias",
                                                "norm.running_mean", "norm.running_var", "norm.num_batches_tracked"]


def test_auto_fuses_where_the_path_table_runs_every_pass_on_triton(triton_on_cpu, monkeypatch, tmp_path):
    """Under ``auto`` a layer fuses only where the measured path table puts its forward, input
    gradient and weight gradient all on Triton (a CPU table here, as ``auto_paths`` reads for CPU)."""
    import json

    from ger_kernels import auto_paths

    calls = spy_fused_calls(monkeypatch)
    model = block(P4MConvP4M)
    x = torch.randn(2, 16, 5, 4)
    problems = [auto_paths.layer_problem(x, model[0].weight, 1, 1, 1, 8),
                auto_paths.layer_problem(torch.randn(2, 24, 5, 4), model[3].weight, 1, 1, 1, 8)]

    def table(paths):
        entries = {e: {"path": p, "measured": "a test"} for problem in problems
                   for e, p in zip(auto_paths.pass_entries(auto_paths.pass_classes(problem)), paths)}
        auto_paths.table_path("cpu", tmp_path).write_text(json.dumps({"entries": entries}))
        monkeypatch.setattr(auto_paths, "CHOOSER", auto_paths.PathChooser(tmp_path / "cache.json", tmp_path))

    for conv in (model[0], model[3]):
        conv.backend = "auto"
    table(["triton", "triton", "reference"])
    assert not fused.fuses(model[0], x)
    table(["triton"] * 3)
    assert fused.fuses(model[0], x)
    train_step_matches_unfused(model, x)
    assert calls == [model[0], model[3]]
