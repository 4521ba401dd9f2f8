import types

import pytest
import torch

pytest.importorskip("triton")

from ger_kernels import functional, reference  # noqa: E402
from ger_kernels.groups import P4, P4M  # noqa: E402
from ger_kernels.triton import group_conv, group_conv2d  # noqa: E402
from ger_kernels.triton.conv_norm import bn_group_conv2d  # noqa: E402
from ger_kernels.triton.tuning import CONFIGS, FORCE_ENV  # noqa: E402
from helpers import max_rel_err  # noqa: E402

# group, lifting, k, stride, padding, dilation, H, W, batch
CASES = [
    (P4M, True, 3, 1, 1, 1, 9, 7, 2),
    (P4M, False, 3, 1, 1, 1, 9, 7, 2),
    (P4, True, 3, 1, 1, 1, 8, 9, 1),
    (P4, False, 3, 2, 1, 1, 9, 7, 1),
    (P4M, False, 3, 2, 1, 1, 8, 8, 1),
    (P4M, False, 3, 1, 2, 2, 9, 7, 1),
    (P4, False, 3, 2, 2, 2, 11, 9, 1),
    (P4M, False, 2, 2, 0, 1, 8, 6, 1),
    (P4, True, 2, 2, 0, 1, 8, 10, 1),
    (P4M, True, 5, 2, 2, 1, 11, 9, 1),
    (P4, False, 1, 1, 0, 1, 5, 4, 1),
    (P4, True, 1, 2, 0, 1, 6, 5, 1),  # input pixels of odd phases meet no tap: zero gradient
    (P4M, True, 3, 1, 1, 1, 12, 11, 2),  # enough pixels to split the weight gradient's reduction
]
def conv_args(group, lifting, k, height, width, batch=2, c_in=3, c_out=9, device="cpu"):
    """float64 input, weight, bias; c_out=9 spans two column tiles for p4m."""
    s_in = 1 if lifting else group.order
    x = torch.randn(batch, c_in * s_in, height, width, dtype=torch.float64, device=device)
    w = torch.randn(c_out, c_in, s_in, k, k, dtype=torch.float64, device=device)
    b = torch.randn(c_out, dtype=torch.float64, device=device)
    return x, w, b


def run(conv, x, w, b, grad, dtype=None, **kwargs):
    """Output and the gradients of (output * grad).sum() w.r.t. x, w, b, computed in ``dtype``."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_(True) for t in (x, w, b)]
    out = conv(*leaves, **kwargs)
    out.backward(grad.to(out.dtype))
    return [out] + [t.grad for t in leaves]


def errors(actual, expected):
    return {name: max_rel_err(a, e) for name, a, e in zip(("out", "dx", "dw", "db"), actual, expected)}


def parity(x, w, b, stride, padding, dilation, group, dtype=torch.float32, relu=False, x_view=None, grad=None):
    """Relative errors of the Triton op in ``dtype`` against the float64 reference, per result;
    ``grad`` (random by default) is the output gradient."""
    if grad is None:
        grad = torch.randn_like(reference.conv_expanded(x, w, b, stride, padding, dilation, group))

    def ref(x, w, b):
        out = reference.conv_expanded(x, w, b, stride, padding, dilation, group)
        return out.relu() if relu else out

    def fused(x, w, b):
        x = x_view(x) if x_view else x
        return group_conv.group_conv2d(x, w, b, stride, padding, dilation, group, relu=relu)

    return errors(run(fused, x, w, b, grad, dtype), run(ref, x, w, b, grad))


@pytest.mark.parametrize("group,lifting,k,stride,padding,dilation,height,width,batch", CASES,
                         ids=lambda v: getattr(v, "name", str(v)))
def test_float32_matches_reference(device, group, lifting, k, stride, padding, dilation, height, width, batch):
    x, w, b = conv_args(group, lifting, k, height, width, batch, device=device)
    errs = parity(x, w, b, stride, padding, dilation, group)
    assert max(errs.values()) <= 1e-5, errs


def assert_half_parity(x, w, b, stride, padding, dilation, group, dtype, x_view=None):
    """SPEC section 8: at most twice the error of PyTorch's conv on W~ in ``dtype``, and <= 1e-2.
    ``x_view`` lays out the input and the output gradient."""
    grad = torch.randn_like(reference.conv_expanded(x, w, b, stride, padding, dilation, group))
    grad = x_view(grad) if x_view else grad
    errs = parity(x, w, b, stride, padding, dilation, group, dtype=dtype, grad=grad, x_view=x_view)
    conv = lambda x, w, b: reference.conv_expanded(x, w, b, stride, padding, dilation, group)  # noqa: E731
    torch_errs = errors(run(conv, x, w, b, grad, dtype), run(conv, x, w, b, grad))
    for name, err in errs.items():
        assert err <= min(2 * torch_errs[name], 1e-2), (name, err, torch_errs[name])


@pytest.mark.parametrize("kind,dtype,index", [(kind, dtype, index) for kind, dtype in
                                               [("float32", torch.float32), ("half", torch.float16)]
                                               for index in range(max(map(len, CONFIGS[kind].values())))],
                         ids=lambda v: str(v).removeprefix("torch."))
def test_every_config(device, monkeypatch, kind, dtype, index):
    """Config ``index`` of every list of the dtype class (lists without one use their first)."""
    names = [configs[index].name for configs in CONFIGS[kind].values() if index < len(configs)]
    monkeypatch.setenv(FORCE_ENV, ",".join(names))
    x, w, b = conv_args(P4M, False, 3, 6, 5, c_in=5, device=device)
    if dtype == torch.float32:
        errs = parity(x, w, b, 2, 1, 1, P4M)
        assert max(errs.values()) <= 1e-5, errs
    else:
        assert_half_parity(x, w, b, 2, 1, 1, P4M, dtype)


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[6], CASES[7], CASES[9], CASES[10], CASES[12],
                                  (P4M, False, 5, 1, 2, 1, 7, 6, 1)],
                         ids=["lift", "p4m", "p4-s2-d2", "p4m-k2", "lift-k5-s2", "p4-k1", "splits", "p4m-k5"])
def test_weight_gradient_with_output_channel_rows(device, monkeypatch, case):
    """The "channels" variant of the weight gradient (rows C_out*S, the fold in the epilogue into
    each tap's orbit: k = 1, 2, 3, 5, whose largest orbits have 1, 4, 4 and 8 taps for p4m)."""
    group, lifting, k, stride, padding, dilation, height, width, batch = case
    variant = [c for c in CONFIGS["float32"]["weight_grad"] if c.variant == "channels"][0]
    monkeypatch.setenv(FORCE_ENV, variant.name)
    x, w, b = conv_args(group, lifting, k, height, width, batch, device=device)
    errs = parity(x, w, b, stride, padding, dilation, group)
    assert errs["dw"] <= 1e-5, errs


@pytest.mark.parametrize("lifting", [False, True])
def test_weight_gradient_with_output_channel_rows_channels_last(device, monkeypatch, lifting):
    """... on channels_last maps: vector loads of 8 channels (ALIGN_DY, and ALIGN_X but for the
    lifting layer's 3 input channels, whose dy is still read as vectors)."""
    variant = [c for c in CONFIGS["float32"]["weight_grad"] if c.variant == "channels"][0]
    monkeypatch.setenv(FORCE_ENV, variant.name)
    x, w, b = conv_args(P4M, lifting, 3, 7, 5, c_out=5, device=device)
    view = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
    grad = view(torch.randn(2, 40, 7, 5, dtype=torch.float64, device=device))
    assert group_conv._alignment(view(x)) == (1 if lifting else 8) and group_conv._alignment(grad) == 8
    errs = parity(x, w, b, 1, 1, 1, P4M, x_view=view, grad=grad)
    assert errs["dw"] <= 1e-5, errs


@pytest.mark.parametrize("case", [c for c in CASES if c[1]], ids=["p4m", "p4", "p4-k2-s2", "p4m-k5-s2", "p4-k1-s2",
                                                                   "p4m-splits"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_taps_variant(device, monkeypatch, case, layout):
    """The "taps" forward of lifting layers (the reduction over k*k*C (tap, channel) pairs, 32 at a
    time): 3 and 5 input channels (27 and 45 rows at k = 3: one and two steps, the last partial),
    k = 1, 2, 5, stride 2, NCHW, channels_last and strided input, ReLU in the epilogue."""
    group, lifting, k, stride, padding, dilation, height, width, batch = case
    taps = next(c.name for c in CONFIGS["float32"]["forward"] if c.variant == "taps")
    monkeypatch.setenv(FORCE_ENV, taps)
    view = {"nchw": None, "channels_last": lambda t: t.to(memory_format=torch.channels_last),
            "strided": lambda t: t.repeat_interleave(2, -1)[..., ::2]}[layout]
    for c_in in (3, 5):
        x, w, b = conv_args(group, lifting, k, height, width, batch, c_in=c_in, c_out=5, device=device)
        grad = torch.randn_like(reference.conv_expanded(x, w, b, stride, padding, dilation, group))
        errs = parity(x, w, b, stride, padding, dilation, group, x_view=view, relu=c_in == 5,
                      grad=view(grad) if view else grad)
        assert errs["out"] <= 1e-5, (c_in, errs)


def test_taps_variant_half(device, monkeypatch):
    """... with each 16-bit "taps" config, in float16 on a channels_last lifting layer."""
    view = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
    for config in (c for c in CONFIGS["half"]["forward"] if c.variant == "taps"):
        monkeypatch.setenv(FORCE_ENV, config.name)
        x, w, b = conv_args(P4M, True, 3, 9, 7, c_in=3, c_out=10, device=device)
        assert_half_parity(x, w, b, 1, 1, 1, P4M, torch.float16, x_view=view)


FIELDS_CASES = [CASES[0], CASES[1], CASES[3], CASES[5], CASES[7], CASES[9], CASES[10]]


@pytest.mark.parametrize("case", FIELDS_CASES, ids=["lift", "p4m", "p4-s2", "p4m-d2", "k2-s2", "lift-k5-s2", "p4-k1"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_fields_variant(device, monkeypatch, case, layout):
    """The "fields" variant of forward and input_grad (weight tiles as vectors of whole fields,
    a field-minor copy of w padded to 8 fields): 9 and 23 output fields, partial field tiles,
    NCHW, channels_last and every other column of a wider tensor (input and output gradient)."""
    group, lifting, k, stride, padding, dilation, height, width, batch = case
    firsts = [next(c.name for c in CONFIGS["float32"][family] if c.variant == "fields")
              for family in ("forward", "input_grad")]
    monkeypatch.setenv(FORCE_ENV, ",".join(firsts))
    view = {"nchw": None, "channels_last": lambda t: t.to(memory_format=torch.channels_last),
            "strided": lambda t: t.repeat_interleave(2, -1)[..., ::2]}[layout]
    for c_out in (9, 23):
        x, w, b = conv_args(group, lifting, k, height, width, batch, c_in=2, c_out=c_out, device=device)
        grad = torch.randn_like(reference.conv_expanded(x, w, b, stride, padding, dilation, group))
        errs = parity(x, w, b, stride, padding, dilation, group, x_view=view, relu=c_out == 23,
                      grad=view(grad) if view else grad)
        assert max(errs.values()) <= 1e-5, (c_out, errs)


@pytest.mark.parametrize("group,padding,dilation,height,width", [(P4M, 1, 1, 9, 19), (P4M, 2, 2, 7, 5),
                                                                   (P4, 0, 1, 10, 17), (P4, 1, 1, 2, 133)])
@pytest.mark.parametrize("boxes", ["tma", "tma-row"])
def test_tma_variant(device, monkeypatch, group, padding, dilation, height, width, boxes):
    """The "tma" ("tma-row") forward and input gradient and the "channels-tma" ("channels-tma-row")
    weight gradient (input and dy boxes through tensor descriptors, zeros outside the map) on
    channels_last maps at stride 1, in float16 (their configs are the 16-bit ones): tiles cut by the
    map's edges, two images, 10 and 22 output fields, boxes wider than the channels (and, for the
    rows, than the map, or two of them to a row: 133 columns)."""
    names = [next(c.name for c in CONFIGS["half"][family] if c.variant in (boxes, "channels-" + boxes))
             for family in ("forward", "input_grad", "weight_grad")]
    monkeypatch.setenv(FORCE_ENV, ",".join(names))
    view = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
    for c_in, c_out in ((2, 10), (6, 22)):  # channels of 16-byte rows: 16, 48 (p4m), 8, 24 (p4) in; 80, 176, 40, 88 out
        x, w, b = conv_args(group, False, 3, height, width, 2, c_in=c_in, c_out=c_out, device=device)
        assert group_conv._tma_eligible(view(x).half(), 1)
        assert group_conv._tma_eligible(view(torch.randn(1, c_out * group.order, 2, 2, dtype=torch.half)), 1)
        assert_half_parity(x, w, b, 1, padding, dilation, group, torch.float16, x_view=view)


def test_tma_eligibility():
    """Where no descriptor can describe the input, a "tma" config runs the "fields" kernel."""
    x = torch.randn(1, 16, 5, 6, dtype=torch.float16)
    channels_last = x.to(memory_format=torch.channels_last)
    assert group_conv._tma_eligible(channels_last, 1)
    assert not group_conv._tma_eligible(channels_last, 2)  # stride 2
    assert not group_conv._tma_eligible(x, 1)  # NCHW
    assert not group_conv._tma_eligible(torch.randn(1, 3, 5, 6).to(memory_format=torch.channels_last), 1)  # 12 B


def test_field_minor_layout():
    """Row (kh, kw, i, s) of the forward copy holds w[:, i, s, kh, kw]; row (kh, kw, o, s) of the
    input-gradient copy holds w[o, :, s, kh, kw]; both zero-padded to the multiple asked for, so that
    every program's fields are inside a row (the kernels read them unmasked)."""
    w = torch.randn(5, 3, 8, 3, 3)
    rows = group_conv._field_minor(w, 0, 8)
    assert rows.shape == (3 * 3 * 3 * 8, 8)
    assert torch.equal(rows[((2 * 3 + 1) * 3 + 2) * 8 + 5, :5], w[:, 2, 5, 2, 1])
    assert not rows[:, 5:].any()
    rows = group_conv._field_minor(w, 1, 16)
    assert rows.shape == (3 * 3 * 5 * 8, 16)
    assert torch.equal(rows[((1 * 3 + 2) * 5 + 4) * 8 + 7, :3], w[4, :, 7, 1, 2])
    assert not rows[:, 3:].any()
    layouts = group_conv._WeightLayouts(torch.randn(17, 3, 8, 3, 3), fields_dim=0)
    assert [layouts.field_minor(fields).shape[1] for fields in (2, 8, 16, 32)] == [24, 24, 32, 32]
    huge = torch.empty(2 ** 16, 2 ** 12, 1, 3, 3, device="meta")  # 2^31 entries and more: 32-bit offsets overflow
    with pytest.raises(ValueError, match="32-bit offsets"):
        group_conv._field_minor(huge, 0, 8)


def test_weight_gradient_reduction_is_split():
    assert group_conv._splits(torch.device("cpu"), 9, 9) == 2
    assert group_conv._splits(torch.device("cpu"), 9, 7) == 1  # at least four blocks a range


def test_weight_gradient_splits_fill_the_last_wave(monkeypatch):
    """On an H200 (132 SMs) the 23-field layer's weight gradient (4 tiles of 128 x 128 x 9 taps = 36
    programs a range, 12544 blocks of 64 pixels; two programs fit an SM) takes 22 splits of 571
    blocks: 792 programs, 3 full waves of 264. Counting one program an SM would give 11 splits, 396
    programs, one and a half waves of 264: a third more time (waves x blocks a range: 2282 against
    1713; the bound is 36 x 12544 / 264 = 1710.5). At 45 fields (81 programs a range, 3136 blocks)
    13 splits either way: four waves of 264 on 1053 programs."""
    monkeypatch.setattr(group_conv, "_processors", lambda device: 132)
    cuda = torch.device("cuda")

    def cost(tiles, blocks, splits, slots):
        per_range = -(-blocks // splits)
        return -(-tiles * -(-blocks // per_range) // slots) * per_range

    assert (group_conv._splits(cuda, 36, 12544), group_conv._splits(cuda, 36, 12544, resident=2)) == (11, 22)
    assert (cost(36, 12544, 11, 264), cost(36, 12544, 22, 264)) == (2282, 1713)
    assert group_conv._splits(cuda, 81, 3136, resident=2) == 13
    for tiles, blocks in [(81, 3136), (324, 784), (1296, 196), (1, 3), (500, 100000)]:
        for resident in (1, 2, 3):
            chosen = group_conv._splits(cuda, tiles, blocks, resident)
            slots = 132 * resident
            allowed = range(1, max(1, min(-(-8 * slots // tiles), blocks // 4)) + 1)
            assert chosen in allowed
            assert cost(tiles, blocks, chosen, slots) == min(cost(tiles, blocks, s, slots) for s in allowed)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(device, layout):
    x, w, b = conv_args(P4M, False, 3, 7, 5, c_out=5, device=device)
    if layout == "channels_last":
        view = lambda t: t.to(memory_format=torch.channels_last)  # noqa: E731
    else:  # every other column of a wider tensor
        view = lambda t: t.repeat_interleave(2, -1)[..., ::2]  # noqa: E731
    assert not view(x).is_contiguous()
    grad = view(torch.randn(2, 40, 7, 5, dtype=torch.float64, device=device))  # vector loads of 8 channels
    errs = parity(x, w, b, 1, 1, 1, P4M, x_view=view, grad=grad)
    assert max(errs.values()) <= 1e-5, errs
    out = group_conv2d(view(x.float()), w.float(), b.float(), 1, 1, 1, P4M)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


def test_strided_bias(device):
    """A strided bias view (the kernels read a dense vector), through the public API and the fused conv."""
    x, w, b = (t.float() for t in conv_args(P4M, True, 3, 5, 4, device=device))
    strided = b.repeat_interleave(2)[::2]
    expected = functional.group_conv2d(x, w, b, padding=1, backend="reference")
    assert max_rel_err(functional.group_conv2d(x, w, strided, padding=1, backend="triton"), expected) <= 1e-5
    fused, _ = bn_group_conv2d(x, w, strided, None, None, None, None, 1, 1, 1, 8, False, False, False)
    assert max_rel_err(fused, expected) <= 1e-5


def test_relu_epilogue(device):
    x, w, b = conv_args(P4, False, 3, 9, 7, device=device)
    errs = parity(x, w, b, 1, 1, 1, P4, relu=True)
    assert max(errs.values()) <= 1e-5, errs
    out = group_conv.group_conv2d(x.float(), w.float(), b.float(), 1, 1, 1, P4, relu=True)
    assert (out == 0).any() and out.min() == 0


def test_empty_batch_launches_nothing(device, monkeypatch):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("a kernel was launched for an empty batch")

    for name in ("forward_kernel", "input_grad_kernel", "weight_grad_kernel", "weight_grad_channels_kernel"):
        monkeypatch.setattr(group_conv, name, NoLaunch())
    x, w, b = (t.float().requires_grad_(True) for t in conv_args(P4M, False, 3, 9, 7, batch=0, device=device))
    out = group_conv2d(x, w, b, 1, 1, 1, P4M)
    assert out.shape == (0, 72, 9, 7)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("lifting", [True, False])
def test_float16(device, lifting):
    x, w, b = conv_args(P4M, lifting, 3, 7, 6, device=device)
    assert_half_parity(x, w, b, 1, 1, 1, P4M, torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs CUDA: the Triton interpreter's bfloat16 tl.dot is wrong (triton 3.6 and 3.9)")
@pytest.mark.parametrize("lifting", [True, False])
def test_bfloat16_on_cuda(monkeypatch, lifting):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(FORCE_ENV, "0")
    x, w, b = conv_args(P4M, lifting, 3, 33, 31, c_in=8, c_out=12, device="cuda")
    assert_half_parity(x, w, b, 1, 1, 1, P4M, torch.bfloat16)


@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 2, 0, 1), (5, 2, 2, 1),
                                                         (3, 2, 2, 2), (5, 3, 1, 2), (4, 2, 0, 3), (5, 4, 3, 2),
                                                         (2, 3, 0, 1)])
def test_phase_taps(k, stride, padding, dilation):
    """Each phase's taps (those reaching output pixels from its input pixels) are the progressions
    the kernels step through from the loop counter: kh0 + a*period, kw0 + b*period, kh-major."""
    rows, period = group_conv.phase_taps(k, stride, padding, dilation, torch.device("cpu"))
    assert rows.dtype == torch.int32 and rows.shape == (stride * stride * 4,)
    for phase, (kh0, kw0, n_h, n_w) in enumerate(rows.view(-1, 4).tolist()):
        ph, pw = divmod(phase, stride)
        meeting = [(kh, kw) for kh in range(k) for kw in range(k) if (ph + padding - kh * dilation) % stride == 0
                   and (pw + padding - kw * dilation) % stride == 0]
        stepped = [(kh0 + i // max(n_w, 1) * period, kw0 + i % max(n_w, 1) * period) for i in range(n_h * n_w)]
        assert stepped == meeting, (phase, stepped, meeting)
    if (k, stride, padding, dilation) == (3, 2, 1, 1):
        assert rows.view(-1, 4).tolist() == [[1, 1, 1, 1], [1, 0, 1, 2], [0, 1, 2, 1], [0, 0, 2, 2]] and period == 2


def test_tf32_is_opt_in(monkeypatch):
    monkeypatch.delenv(group_conv.TF32_ENV, raising=False)
    assert group_conv.precision(torch.float32) == "ieee"
    monkeypatch.setenv(group_conv.TF32_ENV, "1")
    assert group_conv.precision(torch.float32) == "tf32"
    assert group_conv.precision(torch.bfloat16) == "ieee"


def test_index_tables_are_small_and_consistent():
    """O(S^2 + S*k^2) entries (int32 for the kernels, int64 for the host's gather over tap orbits), and
    the inverses the weight gradient relies on."""
    for group in (P4M, P4):
        s, k = group.order, 3
        t = group_conv.tables(group, k, torch.device("cpu"))
        width = t["orbit_sources"].shape[1]
        assert width <= s and sum(table.numel() for table in t.values()) == 2 * s * s + 2 * s * k * k + s + (
            width + 1) * k * k
        orient, source = t["orient"].view(s, s).long(), t["source"].view(s, s).long()
        taps, inverse = group.tap_permutation(k), t["inverse_taps"].view(s, k * k).long()
        assert torch.equal(orient.gather(1, source), torch.arange(s).expand(s, s))
        assert torch.equal(taps.gather(1, inverse), torch.arange(k * k).expand(s, k * k))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("group", [P4M, P4], ids=["p4m", "p4"])
def test_orbits_of_the_taps(group, k):
    """A program's fold writes tap j's transforms taps[t, j] to slot[t, j] of its partial; tap d gathers
    the slots position[d] of the partials of its orbit's taps (sources[d]): each (t, j) reaches d
    exactly when j is in sources[d] and its slot is position[d], and slots fit the orbit width."""
    taps = group.tap_permutation(k)
    slot, sources, position = group_conv._orbits(taps)
    taps_count = k * k
    assert slot.shape == taps.shape and sources.shape[0] == taps_count
    assert int(slot.max()) < sources.shape[1] <= min(group.order, taps_count)
    for d in range(taps_count):
        members = [j for j in sources[d].tolist() if j < taps_count]
        reaching = {j for t in range(group.order) for j in range(taps_count) if taps[t, j] == d}
        assert set(members) == reaching and d in members
        assert all(slot[t, j] == position[d] for t in range(group.order) for j in range(taps_count) if taps[t, j] == d)
    for j in range(taps_count):  # the slots of one program's fold: one per distinct transform of its tap
        assert len({int(slot[t, j]) for t in range(group.order)}) == len(set(taps[:, j].tolist()))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("group", [P4M, P4], ids=["p4m", "p4"])
def test_tap_codes_compute_the_tap_table(group, k):
    """The kernels compute taps[t, tap] from tap_code[t] (``_transformed_tap``, run here on int32
    tensors); it must reproduce the group's table for every t and tap."""
    t = group_conv.tables(group, k, torch.device("cpu"))
    code = t["tap_code"][:, None]
    kh, kw = torch.arange(k * k, dtype=torch.int32) // k, torch.arange(k * k, dtype=torch.int32) % k
    taps = group_conv._transformed_tap.fn(code, kh, kw, k)
    assert torch.equal(taps.long(), group.tap_permutation(k).view(group.order, k * k))
    assert len(set(t["tap_code"].tolist())) == (group.order if k > 1 else 1)


def test_unsupported_inputs(monkeypatch, interpreter):
    x, w, b = conv_args(P4M, False, 3, 5, 5)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16 tensors, got torch.float64"):
        group_conv2d(x, w, b, 1, 1, 1, P4M)
    with pytest.raises(ValueError, match=r"input \(H, W\) = \(5, 5\) is smaller than the dilated kernel 7 x 7"):
        group_conv2d(x.float(), w.float(), b.float(), 1, 0, 3, P4M)
    x16, w16 = x.bfloat16(), w.bfloat16()
    grad = torch.zeros(2, 72, 5, 5, dtype=torch.bfloat16)
    for call in (lambda: group_conv2d(x16, w16, None, 1, 1, 1, P4M),
                 lambda: group_conv.input_grad_op(grad, w16, list(x.shape), False, 1, 1, 1, 8),
                 lambda: group_conv.weight_grad_op(grad, x16, 3, 8, 1, 1, 1, 8)):
        with pytest.raises(TypeError, match=r"interpreter \(TRITON_INTERPRET=1, triton .*\) computes bfloat16 dots "
                                            r"wrongly; run the Triton convolution in float32 or float16 there, or on"):
            call()
    huge = types.SimpleNamespace(shape=(2, 8, 2, 2), stride=lambda: (2 ** 33, 1, 2 ** 31, 8))
    group_conv._check_offsets(types.SimpleNamespace(shape=(9, 8, 2, 2), stride=lambda: (2 ** 33, 1, 2 ** 29, 8)))
    with pytest.raises(ValueError, match=r"32-bit offsets; a tensor of shape \(2, 8, 2, 2\)"):
        group_conv._check_offsets(x, huge)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match=r"cpu tensors only in the Triton interpreter \(TRITON_INTERPRET=1\)"):
        group_conv2d(x.float(), w.float(), b.float(), 1, 1, 1, P4M)


def test_opcheck(interpreter):
    x, w, b = (t.float() for t in conv_args(P4M, False, 3, 4, 3, batch=1, c_in=1, c_out=2))
    grad = torch.randn(1, 16, 2, 2)
    ops = torch.ops.ger_kernels_triton
    for op, args in [
        (ops.group_conv2d, (x.requires_grad_(True), w.requires_grad_(True), b, 2, 1, 1, 8, False)),
        (ops.group_conv2d, (x.to(memory_format=torch.channels_last), w, None, 1, 2, 2, 8, True)),
        (ops.group_conv2d_input_grad, (grad, w.detach(), [1, 8, 4, 3], False, 2, 1, 1, 8)),
        (ops.group_conv2d_weight_grad, (grad, x.detach(), 3, 8, 2, 1, 1, 8)),
    ]:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(interpreter, backend):
    x, w, b = (t.float().requires_grad_(True) for t in conv_args(P4M, True, 3, 6, 5, batch=1, c_in=2, c_out=3))
    x = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)

    def f(x, w, b):
        return group_conv2d(x, w, b, 1, 1, 1, P4M).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=backend)
    grads = torch.autograd.grad(compiled(x, w, b), (x, w, b))
    expected = torch.autograd.grad(f(x, w, b), (x, w, b))
    for actual, want in zip(grads, expected):
        assert max_rel_err(actual, want) <= 1e-6


@pytest.mark.parametrize("lifting", [True, False])
def test_second_derivatives_match_reference(interpreter, lifting):
    """The backward ops are differentiable (by each other and the forward): d/d(x, w) of a
    function of the first gradients, against the float64 reference."""
    x, w, b = conv_args(P4, lifting, 3, 5, 4, batch=1, c_in=2, c_out=2)

    def second_derivatives(conv, x, w, b):
        x, w, b = (t.detach().requires_grad_(True) for t in (x, w, b))
        out = conv(x, w, b, 2, 1, 1, P4)
        dx, dw = torch.autograd.grad(out.square().sum(), (x, w), create_graph=True)
        return torch.autograd.grad(dx.sin().sum() + dw.square().sum(), (x, w))

    actual = second_derivatives(group_conv2d, x.float(), w.float(), b.float())
    expected = second_derivatives(reference.conv_expanded, x, w, b)
    for a, e in zip(actual, expected):
        assert max_rel_err(a, e) <= 1e-5


def test_autocast(device):
    """As F.conv2d: float32 arguments cast to the region's dtype, gradients back in float32.
    float16 checks values; bfloat16 the dtype flow, on CUDA (the interpreter refuses it)."""
    x, w, b = (t.float().requires_grad_(True) for t in conv_args(P4, False, 3, 4, 3, 1, 1, 2, device=device))
    for dtype in (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.float16,):
        with torch.autocast(device.type, dtype=dtype):
            out = group_conv.group_conv2d_op(x, w, b, 1, 1, 1, 4, False)
        assert out.dtype == dtype
        if dtype == torch.float16:
            low = [t.detach().half() for t in (x, w, b)]
            assert torch.equal(out, group_conv.group_conv2d_op(*low, 1, 1, 1, 4, False))
        out.float().sum().backward()
        assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32
        with torch.autocast(device.type, dtype=dtype):
            grad = torch.ones(out.shape, device=device)
            assert group_conv.input_grad_op(grad, w, list(x.shape), False, 1, 1, 1, 4).dtype == dtype
            assert group_conv.weight_grad_op(grad, x, 3, 4, 1, 1, 1, 4).dtype == dtype
