"""e2cnn's R2Conv between regular fields at the shapes of benchmarks/run.py. e2cnn needs
numpy<2, so run.py starts this in the e2cnn venv (`make test-e2cnn` creates .venv-e2cnn) on
the same machine, and reads the JSON it prints: ``{label: {mode: {"ms":..., "peak_bytes":...}}}``.

    .venv-e2cnn/bin/python benchmarks/e2cnn_contender.py SHAPES_JSON --device cpu --dtype float32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch

from measure import interleaved_medians, peak_memory_bytes

warnings.filterwarnings("ignore")
from e2cnn import gspaces  # noqa: E402
from e2cnn import nn as enn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shapes", help="JSON list of {label, batch, in_fields, in_orientations, out_fields, "
                                       "group_order, height, width, kernel_size, stride, padding, dilation}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results = {}
    for shape in json.loads(args.shapes):
        gs = gspaces.FlipRot2dOnR2(N=4) if shape["group_order"] == 8 else gspaces.Rot2dOnR2(N=4)
        field = gs.trivial_repr if shape["in_orientations"] == 1 else gs.regular_repr
        conv = enn.R2Conv(enn.FieldType(gs, shape["in_fields"] * [field]),
                          enn.FieldType(gs, shape["out_fields"] * [gs.regular_repr]), shape["kernel_size"],
                          padding=shape["padding"], stride=shape["stride"], dilation=shape["dilation"]).to(device)
        conv.train()  # expands its filter on every call, as in training
        x = torch.randn(shape["batch"], shape["in_fields"] * shape["in_orientations"], shape["height"],
                        shape["width"], device=device, dtype=dtype, requires_grad=True)
        conv = conv.to(dtype)

        def forward():
            with torch.no_grad():
                return conv(enn.GeometricTensor(x, conv.in_type)).tensor

        def forward_backward():
            out = conv(enn.GeometricTensor(x, conv.in_type)).tensor
            return torch.autograd.grad(out, [x] + list(conv.parameters()), torch.ones_like(out))

        steps = {"forward": forward, "forward+backward": forward_backward}
        times = interleaved_medians(steps, device, args.repeats)
        results[shape["label"]] = {mode: {"ms": times[mode], "peak_bytes": peak_memory_bytes(step, device)}
                                   for mode, step in steps.items()}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
