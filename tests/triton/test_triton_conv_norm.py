"""The Triton group convolution fused with the batch norms around it (``ger_kernels.triton.conv_norm``):
the batch norm (+ ReLU) of its input applied on load and the batch statistics of its output from
its epilogue, against the unfused float64 reference (BN written out in torch, batch statistics
differentiated by autograd)."""

import pytest
import torch

pytest.importorskip("triton")

from ger_kernels import reference  # noqa: E402
from ger_kernels.groups import P4, P4M  # noqa: E402
from ger_kernels.triton import group_conv  # noqa: E402
from ger_kernels.triton.conv_norm import bn_group_conv2d  # noqa: E402
from ger_kernels.triton.tuning import CONFIGS, FORCE_ENV  # noqa: E402
from helpers import max_rel_err  # noqa: E402

EPS = 1e-5


def field_view(v):
    return v.view(1, -1, 1, 1, 1)


def reference_bn_conv(x, w, b, gamma, beta, running, order, relu, stride, padding, dilation, group):
    """conv(act(bn(x))) and the (count, mean, M2) of its output fields, in float64 torch: batch
    statistics (differentiable) unless ``running`` (mean, var) is given; gamma None: no batch norm."""
    if gamma is not None:
        x5 = x.unflatten(1, (-1, order))
        if running is None:
            var, mean = torch.var_mean(x5, dim=(0, 2, 3, 4), correction=0)
        else:
            mean, var = running
        z = (x5 - field_view(mean)) * field_view(torch.rsqrt(var + EPS) * gamma) + field_view(beta)
        x = (z.relu() if relu else z).flatten(1, 2)
    out = reference.conv_expanded(x, w, b, stride, padding, dilation, group)
    out5 = out.detach().unflatten(1, (-1, group.order))
    var, mean = torch.var_mean(out5, dim=(0, 2, 3, 4), correction=0)
    count = out5.numel() // out5.shape[1]
    return out, torch.stack([torch.full_like(mean, count), mean, var * count])


def fused_bn_conv(x, w, b, gamma, beta, running, order, relu, stride, padding, dilation, group, view=None):
    """The op on ``view(x)``, its batch norm's mean and invstd given as the reference computes them."""
    mean = invstd = None
    if gamma is not None:
        x5 = x.detach().double().unflatten(1, (-1, order))
        if running is None:
            var, mean = torch.var_mean(x5, dim=(0, 2, 3, 4), correction=0)
        else:
            mean, var = running
        mean, invstd = mean.float(), torch.rsqrt(var + EPS).float()
    x = view(x) if view else x
    return bn_group_conv2d(x, w, b, mean, invstd, gamma, beta, stride, padding, dilation, group.order, relu,
                           running is None, True)


def case(group, lifting, k, height, width, batch, c_in=3, c_out=9, norm=True, device="cpu"):
    s_in = 1 if lifting else group.order
    x = torch.randn(batch, c_in * s_in, height, width, dtype=torch.float64, device=device) * 2 + 0.5
    w = torch.randn(c_out, c_in, s_in, k, k, dtype=torch.float64, device=device)
    b = torch.randn(c_out, dtype=torch.float64, device=device)
    gamma = torch.rand(c_in, dtype=torch.float64, device=device) + 0.5 if norm else None
    beta = torch.randn(c_in, dtype=torch.float64, device=device) if norm else None
    return x, w, b, gamma, beta


def compare(x, w, b, gamma, beta, *, order, relu=True, running=None, conv=(1, 1, 1), group=P4M, view=None):
    """Relative errors of the op in float32 (output, statistics and every gradient) against the
    float64 reference."""
    leaves = [t for t in (x, w, b, gamma, beta) if t is not None]
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    rx, rw, rb, *rnorm = ref_leaves
    out, stats = reference_bn_conv(rx, rw, rb, *(rnorm or [None, None]), running, order, relu, *conv, group)
    grad = torch.randn_like(out)
    out.backward(grad)
    f_leaves = [t.detach().float().clone().requires_grad_(True) for t in leaves]
    fx, fw, fb, *fnorm = f_leaves
    f_running = tuple(t.float() for t in running) if running is not None else None
    f_out, f_stats = fused_bn_conv(fx, fw, fb, *(fnorm or [None, None]), f_running, order, relu, *conv, group, view)
    f_out.backward((view(grad) if view else grad).float())
    errors = {"out": max_rel_err(f_out, out), "mean": max_rel_err(f_stats[1], stats[1]),
              "m2": max_rel_err(f_stats[2], stats[2]), "count": max_rel_err(f_stats[0], stats[0])}
    errors |= {f"d{i}": max_rel_err(f.grad, r.grad) for i, (f, r) in enumerate(zip(f_leaves, ref_leaves))}
    return errors


VIEWS = {"nchw": None, "channels_last": lambda t: t.to(memory_format=torch.channels_last),
         "strided": lambda t: t.repeat_interleave(2, -1)[..., ::2]}

# group, lifting, k, stride, padding, dilation, H, W, batch
CASES = [(P4M, False, 3, 1, 1, 1, 7, 6, 2), (P4, False, 3, 2, 1, 1, 9, 7, 2), (P4M, False, 3, 1, 2, 2, 9, 7, 1),
         (P4, False, 1, 1, 0, 1, 5, 4, 2)]


@pytest.mark.parametrize("layout", list(VIEWS))
@pytest.mark.parametrize("conv_case", CASES, ids=["p4m", "p4-s2", "p4m-d2", "p4-k1"])
def test_batch_norm_on_load_and_statistics_in_the_epilogue(device, conv_case, layout):
    """Forward, statistics and the gradients w.r.t. input (through the batch statistics), weight,
    bias and the batch norm's weight and bias, with zero padding applied after the normalization."""
    group, lifting, k, stride, padding, dilation, height, width, batch = conv_case
    tensors = [t.to(device) if t is not None else None for t in case(group, lifting, k, height, width, batch)]
    errors = compare(*tensors, order=group.order, conv=(stride, padding, dilation), group=group,
                     view=VIEWS[layout])
    assert max(errors.values()) <= 2e-5, errors


def test_fixed_statistics_and_no_relu(device):
    """Eval mode (running statistics: no gradient through them) and a batch norm without ReLU."""
    x, w, b, gamma, beta = (t.to(device) for t in case(P4M, False, 3, 6, 5, 2))
    running = (torch.randn(3, dtype=torch.float64, device=device), torch.rand(3, dtype=torch.float64,
                                                                               device=device) + 0.5)
    errors = compare(x, w, b, gamma, beta, order=8, running=running)
    assert max(errors.values()) <= 2e-5, errors
    errors = compare(x, w, b, gamma, beta, order=8, relu=False)
    assert max(errors.values()) <= 2e-5, errors


@pytest.mark.parametrize("lifting,variant", [(True, ""), (False, ""), (True, "taps")])
def test_statistics_without_batch_norm_of_the_input(device, monkeypatch, lifting, variant):
    """The statistics epilogue alone (no batch norm on load), also after the "taps" lifting forward."""
    if variant:
        monkeypatch.setenv(FORCE_ENV, next(c.name for c in CONFIGS["float32"]["forward"] if c.variant == variant))
    x, w, b, _, _ = (t.to(device) if t is not None else None for t in case(P4M, lifting, 3, 7, 6, 2, norm=False))
    errors = compare(x, w, b, None, None, order=8)
    assert max(errors.values()) <= 2e-5, errors


@pytest.mark.parametrize("variants,dtype", [({"forward": "fields", "input_grad": "fields"}, "float32"),
                                            ({"weight_grad": "channels"}, "float32"),
                                            ({"forward": "tma", "input_grad": "tma", "weight_grad": "channels-tma"},
                                             "half"),
                                            ({"forward": "tma-row", "input_grad": "tma-row",
                                              "weight_grad": "channels-tma-row"}, "half")],
                         ids=["fields", "channels", "tma", "tma-row"])
def test_every_kernel_variant(device, monkeypatch, variants, dtype):
    """The prologue and epilogues in each kernel that has them: "fields" and "tma" forwards and input
    gradients, the "channels" and "channels-tma" weight gradients (the TMA paths in float16, channels_last)."""
    names = [next(c.name for c in CONFIGS[dtype][family] if c.variant == variant)
             for family, variant in variants.items()]
    monkeypatch.setenv(FORCE_ENV, ",".join(names))
    x, w, b, gamma, beta = (t.to(device) for t in case(P4M, False, 3, 9, 19, 2, c_in=2, c_out=10))
    if dtype == "float32":
        errors = compare(x, w, b, gamma, beta, order=8, view=VIEWS["channels_last"])
        assert max(errors.values()) <= 2e-5, errors
        return
    assert_float16_parity(x, w, b, gamma, beta)


def test_weight_gradient_of_narrow_tiles(device, monkeypatch):
    """A fused weight gradient whose tiles have fewer input channels than a wgmma's 64 rows (the
    16-column configs) keeps the normalized x tile as the B operand (the others run transposed)."""
    narrow = next(c for c in CONFIGS["half"]["weight_grad"] if c.block_n < 64)
    monkeypatch.setenv(FORCE_ENV, narrow.name)
    assert_float16_parity(*(t.to(device) for t in case(P4M, False, 3, 9, 19, 2, c_in=2, c_out=10)))


def assert_float16_parity(x, w, b, gamma, beta):
    """The fused op in float16 on channels_last maps against the float64 reference: output,
    statistics and every gradient."""
    view = VIEWS["channels_last"]
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b, gamma, beta)]
    ref, ref_stats = reference_bn_conv(*leaves, None, 8, True, 1, 1, 1, P4M)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    halves = [view(x).half()] + [t.half() for t in (w, b)] + [t.float() for t in (gamma, beta)]
    halves = [t.requires_grad_(True) for t in halves]
    assert group_conv._tma_eligible(halves[0], 1)
    out, stats = fused_bn_conv(*halves, None, 8, True, 1, 1, 1, P4M)
    out.backward(view(grad).half())
    assert max_rel_err(out, ref) <= 5e-3
    assert max_rel_err(stats[1], ref_stats[1]) <= 5e-3 and max_rel_err(stats[2], ref_stats[2]) <= 5e-3
    for name, half, leaf in zip(("x", "w", "b", "gamma", "beta"), halves, leaves):
        assert max_rel_err(half.grad, leaf.grad) <= 2e-2, name


def test_empty_batch(interpreter):
    x, w, b, gamma, beta = case(P4M, False, 3, 5, 5, 0)
    out, stats = bn_group_conv2d(x.float(), w.float(), b.float(), torch.zeros(3), torch.ones(3), gamma.float(),
                                 beta.float(), 1, 1, 1, 8, True, True, True)
    assert out.shape == (0, 72, 5, 5) and torch.equal(stats, torch.zeros(3, 9))


def test_norm_of_the_wrong_shape_is_an_error(interpreter):
    x, w, b, _, _ = case(P4M, False, 3, 5, 5, 1)
    with pytest.raises(ValueError, match=r"norm must be a float32 \(3, 3\) tensor"):
        group_conv.forward(x.float(), w.float(), b.float(), 1, 1, 1, 8, False, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="statistics are of the convolution's output before a ReLU"):
        group_conv.forward(x.float(), w.float(), b.float(), 1, 1, 1, 8, True, statistics=True)


def test_opcheck(interpreter):
    x, w, b, gamma, beta = (t.float() for t in case(P4, False, 3, 5, 4, 2, c_in=2, c_out=3))
    mean, invstd = torch.randn(2), torch.rand(2) + 0.5
    for args in [(x.requires_grad_(), w, b, mean, invstd, gamma, beta, 1, 1, 1, 4, True, True, True),
                 (x, w.requires_grad_(), None, None, None, None, None, 1, 1, 1, 4, False, False, False)]:
        torch.library.opcheck(bn_group_conv2d, args, test_utils=("test_schema", "test_faketensor",
                                                                  "test_autograd_registration"))
    norm = torch.stack([mean, invstd, torch.randn(2)])
    for layout in (torch.contiguous_format, torch.channels_last):
        backward_args = (torch.randn(2, 12, 5, 4), x.detach().contiguous(memory_format=layout), w, norm, True, 1, 1,
                         1, 4, True, True)
        torch.library.opcheck(torch.ops.ger_kernels_triton.bn_group_conv2d_backward, backward_args,
                              test_utils=("test_schema", "test_faketensor"))


def test_fused_kernels_are_tuned_apart_from_the_plain_ones(interpreter, monkeypatch):
    """Their registers differ (some tiles spill only fused): each pass with a fused batch norm has a
    tuning key of its own, the plain passes keep theirs."""
    keys = []

    class RecordingTuner:
        def choose(self, family, kind, key, time_ms, device=(), arch=None):
            keys.append((family, key[-1] == "bn"))
            return CONFIGS[kind][family][0]

    monkeypatch.setattr(group_conv, "_TUNER", RecordingTuner())
    x, w, b, gamma, beta = (t.float() for t in case(P4, False, 3, 5, 4, 2, c_in=2, c_out=3))
    x.requires_grad_(True)
    out, _ = bn_group_conv2d(x, w.requires_grad_(True), b, torch.randn(2), torch.rand(2) + 0.5, gamma, beta, 1, 1,
                             1, 4, True, True, True)
    out.sum().backward()
    assert sorted(keys) == [("forward", True), ("input_grad", True), ("weight_grad", True)]
    keys.clear()
    plain, _ = bn_group_conv2d(x, w, b, None, None, None, None, 1, 1, 1, 4, False, False, False)
    plain.sum().backward()
    assert sorted(keys) == [("forward", False), ("input_grad", False), ("weight_grad", False)]
