import pytest
import torch
from torch import nn

import ger_kernels
from ger_kernels.convert import set_backend
from ger_kernels.models import GERUNet


def test_switches_every_group_convolution_and_keeps_outputs():
    model = nn.Sequential(GERUNet(widths=(2, 3, 4, 5)), nn.Identity()).eval()
    x = torch.randn(1, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(x)
    for name, status in ger_kernels.backends("cpu").items():
        if status.available:
            assert set_backend(model, name) is model
            convs = [m for m in model.modules() if isinstance(m, ger_kernels.nn.GroupConv2d)]
            assert convs and all(m.backend == name for m in convs)
            assert torch.allclose(model(x), before, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_refuses_unknown_or_unavailable_backends_before_changing_anything():
    model = GERUNet(widths=(2, 3, 4, 5), backend="reference")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        set_backend(model, "cudnn")
    for name, status in ger_kernels.backends().items():
        if not status.available:
            with pytest.raises(ValueError, match=f"backend '{name}' is not available"):
                set_backend(model, name)
    assert all(m.backend == "reference" for m in model.modules() if isinstance(m, ger_kernels.nn.GroupConv2d))
