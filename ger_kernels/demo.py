"""The main job of ``make demo``: on the embedded phantom data, train a small GER-UNet and an
R-UNet with (nearly) equal parameter counts, evaluate both with the paper's seven metrics,
draw the paper's Figure 1 and the training curves, and write a report (markdown + JSON)."""

from __future__ import annotations

import json
import os
import time

import torch

import ger_kernels
from ger_kernels import data
from ger_kernels._io import write_text_atomically
from ger_kernels.evaluation import evaluate_model, write_metrics
from ger_kernels.figures import equivariance_figure, training_curves
from ger_kernels.models import count_parameters, group_widths
from ger_kernels.testing import equivariance_errors
from ger_kernels.machine import machine_description
from ger_kernels.training import TrainConfig, model_from_checkpoint, resolve_device, train

__all__ = ["DEMO_WIDTHS", "demo_configs", "run_demo"]

DEMO_WIDTHS = (16, 32, 64, 128)  # R-UNet; GER-UNet gets group_widths(DEMO_WIDTHS) = (6, 11, 23, 45)
# A short CPU run needs a faster schedule than the paper's (lr 2e-4, cross-entropy only, up to 300 epochs).
DEMO_LR, DEMO_DICE_WEIGHT = 2e-3, 1.0


def _pick_slice(dataset) -> int:
    """The test slice with the largest tumor: the clearest Figure 1."""
    return max(range(len(dataset)), key=lambda i: int(dataset[i][1].sum()))


def demo_configs(out: str = "demo_output", source: str = "phantom", size: int = 64, epochs: int = 30,
                 batch_size: int = 8, seed: int = 0) -> dict[str, TrainConfig]:
    """The configurations of the demo's two training runs by name, R-UNet's first, each in ``out/MODEL``."""
    common = dict(data=source, size=size, epochs=epochs, batch_size=batch_size, patience=epochs, seed=seed, lr=DEMO_LR,
                  dice_weight=DEMO_DICE_WEIGHT)
    return {name: TrainConfig(model=model, widths=widths, out=os.path.join(out, model), **common)
            for name, model, widths in (("R-UNet", "r-unet", DEMO_WIDTHS),
                                        ("GER-UNet", "ger-unet", group_widths(DEMO_WIDTHS)))}


def run_demo(out: str = "demo_output", source: str = "phantom", size: int = 64, epochs: int = 30,
             batch_size: int = 8, seed: int = 0, progress: bool = True, resume: bool = True) -> str:
    """Runs the whole workflow; returns the path of ``report.md``. ``resume``: each run resumes from its
    ``last.pt``, as ``train`` does."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    train_set, test_set = data.open_dataset(source, size, seed=seed)
    print(f"data: train {train_set.describe()}; test {test_set.describe()}")
    summaries, models, rows, params = {}, {}, {}, {}
    for name, config in demo_configs(out, source, size, epochs, batch_size, seed).items():
        summaries[name] = train(config, train_set, resume=resume, progress=progress)
        models[name], _ = model_from_checkpoint(os.path.join(config.out, "best.pt"))
        params[name] = count_parameters(models[name])
        rows[name], _ = evaluate_model(models[name], test_set, batch_size=batch_size)
        print(f"{name}: {params[name]} parameters, best epoch {summaries[name]['best_epoch']}, "
              f"test Dice {rows[name]['dice']:.4f}, {summaries[name]['seconds']:.0f} s training")
    write_metrics(out, rows, notes=f"Test split of `{source}` at {size}x{size}; ours in percent.")
    index = _pick_slice(test_set)
    image, mask = test_set[index]
    counts = equivariance_figure(models, image, mask, os.path.join(out, "equivariance.png"))
    training_curves({name: s["history"] for name, s in summaries.items()}, os.path.join(out, "training.png"))
    errors = {name: equivariance_errors(model, test_set[index][0][None], "p4m", "planar", "planar")
              for name, model in models.items()}
    machine = f"{machine_description(resolve_device('auto'))}, ger_kernels {ger_kernels.__version__}"
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine, "data": source, "size": size,
              "epochs": epochs, "parameters": params, "training": {n: {k: v for k, v in s.items() if k != "history"}
                                                                   for n, s in summaries.items()},
              "metrics": rows, "figure1_disagreement_pixels": counts, "equivariance_errors": errors,
              "seconds": time.perf_counter() - start}
    write_text_atomically(os.path.join(out, "report.json"), json.dumps(report, indent=1))
    path = os.path.join(out, "report.md")
    write_text_atomically(path, _markdown(report, open(os.path.join(out, "metrics.md")).read()))
    print(f"report: {path} ({report['seconds']:.0f} s in all)")
    return path


def _markdown(report: dict, metrics_table: str) -> str:
    lines = [f"# GER-UNet vs R-UNet on `{report['data']}`", "",
             f"{report['date']}, {report['machine']}; input {report['size']}x{report['size']}x3, "
             f"{report['epochs']} epochs each (Adam lr {DEMO_LR}, cross-entropy + {DEMO_DICE_WEIGHT} x soft Dice, "
             f"R-UNet with rotation/flip augmentation), total {report['seconds']:.0f} s.", "",
             "| model | parameters | best epoch | best validation Dice | training s |", "|---|---|---|---|---|"]
    for name, t in report["training"].items():
        lines.append(f"| {name} | {report['parameters'][name]:,} | {t['best_epoch']} | {t['best_val_dice']:.4f} | "
                     f"{t['seconds']:.0f} |")
    lines += ["", "## Test metrics (per-slice means; F1 from mean precision and recall)", "", metrics_table.strip(),
              "", "## Equivariance", "",
              "Relative error `max|f(A_g x) - A_g f(x)| / max|A_g f(x)|` of the trained models' score maps "
              "(float32) on one test slice, per group element g = 0..7:", ""]
    for name, errs in report["equivariance_errors"].items():
        lines.append(f"- {name}: " + ", ".join(f"{e:.1e}" for e in errs))
    lines += ["", "Figure 1 (rotation by 90 degrees, g=1): pixels where the prediction of the rotated slice, "
              "rotated back, disagrees with the prediction of the slice: "
              + ", ".join(f"{n} {c}" for n, c in report["figure1_disagreement_pixels"].items()) + ".", "",
              "![Figure 1](equivariance.png)", "", "![training](training.png)", ""]
    return "\n".join(lines)
