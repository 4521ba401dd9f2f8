"""Command line: ``ger-unet COMMAND`` or ``python -m ger_kernels COMMAND``.

- ``demo``: the main job: train GER-UNet and R-UNet on phantom data, evaluate, Figure 1, report.
- ``train`` / ``evaluate`` / ``equivariance`` / ``predict``: the segmentation workflow.
- ``info``: versions, backends (and why not the others), parameter counts at paper widths;
  ``--paths``: the backend of each pass of each GER-UNet convolution under ``backend="auto"``.
- ``check``: equivariance per group element and backend parity of a small p4m network.

Every argument is checked before data is read or a folder created. Errors print one line,
``ger-unet: error: MESSAGE``, and exit with status 2 (``--debug``: the traceback instead);
Ctrl-C prints how to resume and exits with 130. Exit status 1: ``check`` found an error
above the SPEC bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import platform
import sys

import torch
from torch import nn

import ger_kernels
from ger_kernels.convert import set_backend
from ger_kernels.nn import (GroupBatchNorm2d, GroupMaxPool2d, GroupOrientationPool, GroupUpsample, P4MConvP4M,
                            P4MConvZ2)
from ger_kernels.testing import equivariance_errors


def _print_backends() -> None:
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        for name, status in ger_kernels.backends(device).items():
            print(f"  {name:<10} {device:<5} {'available' if status.available else 'unavailable':<12} {status.reason}")


def _opt_in_switches() -> dict[str, str]:
    """Environment switches of kernels that have not yet run (in their current form) on a GPU."""
    from ger_kernels.auto_paths import AUTO_TIMING_ENV
    from ger_kernels.group_batch_norm import TRITON_BN_ENV
    from ger_kernels.triton.tuning import UNVERIFIED_ENV

    return {"GER_KERNELS_CUTE": "the CuTe tensor-core kernels of the cpp backend (CUDA, float16/bfloat16)",
            TRITON_BN_ENV: "the group batch norm's Triton kernels on CUDA",
            UNVERIFIED_ENV: "tuning over the Triton configs no GPU has checked (fields, tma, channels-tma)",
            AUTO_TIMING_ENV: "auto on CUDA times each pass's paths on a layer's first call where its "
                             "path table has no entry"}


def _print_paths(args: argparse.Namespace) -> None:
    """The backend of each pass of each convolution of GER-UNet (paper widths) under ``auto``, for a
    random input of ``args.batch`` x 3 x ``args.size``^2 on ``args.device``, in bfloat16 autocast and
    channels_last on CUDA (as ``ger-unet train``). With ``GER_KERNELS_AUTO_TIMING=1`` a first call on
    CUDA times the passes the path table lacks."""
    from ger_kernels.backends import describe_model, format_paths
    from ger_kernels.models import GERUNet
    from ger_kernels.training import TrainConfig, memory_format, resolve_device

    device = resolve_device(args.device)
    layout = memory_format(TrainConfig(), device)
    model = GERUNet().to(device, memory_format=layout)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=layout)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        rows = describe_model(model, x)
    print(f"backend='auto', pass by pass: GER-UNet (paper widths), input {tuple(x.shape)} on {device}"
          + (", bfloat16 autocast, channels_last" if device.type == "cuda" else "") + ":")
    print("\n".join("  " + line for line in format_paths(rows).splitlines()))


def info(args: argparse.Namespace) -> int:
    from ger_kernels.models import GERUNet, RUNet, count_parameters

    print(f"ger_kernels {ger_kernels.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
          f"{platform.machine()}")
    print("backends:")
    _print_backends()
    print("opt-in until checked on a GPU (=1 switches on):")
    for name, what in _opt_in_switches().items():
        print(f"  {name:<31} {'on ' if os.environ.get(name) == '1' else 'off'}  {what}")
    print("parameters at the paper's widths (paper: 12.78M GER-UNet add, 12.75M R-UNet):")
    for name, model in (("GER-UNet add", GERUNet()), ("GER-UNet concat", GERUNet(skip="concat")),
                        ("R-UNet add", RUNet())):
        print(f"  {name:<16} {count_parameters(model) / 1e6:.2f}M  widths {model.widths}")
    if args.paths:
        _print_paths(args)
    return 0


def check_network() -> nn.Sequential:
    """3 planar channels -> p4m (8 fields) -> BN -> ReLU -> pool -> p4m -> upsample -> mean over orientations."""
    return nn.Sequential(
        P4MConvZ2(3, 8, 3, padding=1), GroupBatchNorm2d(8), nn.ReLU(), GroupMaxPool2d(),
        P4MConvP4M(8, 8, 3, padding=1), GroupBatchNorm2d(8), nn.ReLU(),
        GroupUpsample(2, "bilinear"), P4MConvP4M(8, 2, 3, padding=1), GroupOrientationPool("p4m", "mean"))


def check(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    net = check_network().double()
    x = torch.randn(args.batch, 3, args.size, args.size, dtype=torch.float64)
    net.train()
    net(x)  # move the running statistics away from their initial values
    print(f"p4m network: {sum(p.numel() for p in net.parameters())} parameters, input {tuple(x.shape)}")
    print("equivariance error max|f(A_g x) - A_g f(x)| / max|A_g f(x)|, float64:")
    print("  g   train      eval")
    train_errors = equivariance_errors(net, x, "p4m", "planar", "planar")
    net.eval()
    eval_errors = equivariance_errors(net, x, "p4m", "planar", "planar")
    for g, (e_train, e_eval) in enumerate(zip(train_errors, eval_errors)):
        print(f"  {g}   {e_train:.2e}   {e_eval:.2e}")
    worst = max(train_errors + eval_errors)
    with torch.no_grad():
        expected = net(x)
        print("backend parity, float32 output vs the float64 reference (max|out - ref| / max|ref|):")
        for name, status in ger_kernels.backends("cpu").items():
            if not status.available:
                print(f"  {name:<10} unavailable: {status.reason}")
                continue
            net32 = check_network()
            net32.load_state_dict(net.state_dict())
            out = set_backend(net32, name).eval()(x.float()).double()
            print(f"  {name:<10} {((out - expected).abs().max() / expected.abs().max()).item():.2e}")
    print(f"worst equivariance error {worst:.2e} (SPEC bound 1e-10): {'OK' if worst <= 1e-10 else 'FAILED'}")
    return 0 if worst <= 1e-10 else 1


def demo(args: argparse.Namespace) -> int:
    from ger_kernels.demo import run_demo

    run_demo(args.out, args.data, args.size, args.epochs, args.batch_size, args.seed, progress=not args.quiet,
             resume=not args.no_resume)
    return 0


def _train_config(args: argparse.Namespace):
    from ger_kernels.training import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})


def train_command(args: argparse.Namespace) -> int:
    """Trains in this process, or as one of ``torchrun``'s processes (then rank 0 alone prints)."""
    from ger_kernels import data, distributed
    from ger_kernels.training import check_runs_here, train

    config = _train_config(args)
    processes = distributed.environment(check_runs_here(config))
    if processes.main and processes.distributed:
        print(f"distributed: {processes.backend}, world size {processes.world_size}", flush=True)
    train_set, _ = data.open_dataset(config.data, config.size, tumor_only=config.tumor_only, seed=config.seed,
                                     cache_dir=args.cache_dir)
    if processes.main:
        print(f"train: {train_set.describe()}")
    summary = train(config, train_set, resume=not args.no_resume, progress=not args.quiet)
    if processes.main:
        print(f"best validation Dice {summary['best_val_dice']:.4f} (loss {summary['best_val_loss']:.4f}) at epoch "
              f"{summary['best_epoch']}; checkpoints in {config.out}")
    return 0


def _same_source(a: str, b: str) -> bool:
    """Whether data sources ``a`` and ``b`` share data: paths compared after resolving links; every phantom
    source holds phantom volumes 0, 1, ..."""
    (kind_a, _, path_a), (kind_b, _, path_b) = a.partition(":"), b.partition(":")
    return kind_a == kind_b and (kind_a == "phantom" or path_a == path_b
                                 or os.path.realpath(path_a) == os.path.realpath(path_b))


def _test_set(source: str | None, config, checkpoints: dict[str, dict], whole: bool = False,
              cache_dir: str | None = None):
    """The test data of a checkpoint trained with ``config``: the test side of ``source``'s split (by default
    the data it was trained on), or with ``whole`` every volume of ``source``, which must then be another
    source than the training data; none of its cases may share a file with the training cases of the
    ``checkpoints`` (``{path: payload}``, ``check_not_trained_on``)."""
    from ger_kernels import data
    from ger_kernels.training import check_not_trained_on

    source = source or config.data
    if whole:
        if _same_source(source, config.data):
            raise ValueError(f"--no-split scores every volume of --data, but {source} is what the checkpoint was "
                             f"trained on; give --data a separate test set (e.g. folder:PATH/test, lits:TEST_PATH)")
        test_set = data.open_source(source, config.size, tumor_only=config.tumor_only, cache_dir=cache_dir)
    else:
        test_set = data.open_dataset(source, config.size, tumor_only=config.tumor_only, seed=config.seed,
                                     cache_dir=cache_dir)[1]
    for path, payload in checkpoints.items():
        check_not_trained_on(test_set, payload, path)
    return test_set


def _checkpoints(paths: list[str], device) -> tuple[dict[str, dict], list[tuple]]:
    """The checkpoints at ``paths``: ``{path: payload}``, and each one's ``(model on device, config)``."""
    from ger_kernels.training import load_checkpoint, model_from_checkpoint

    payloads = {path: load_checkpoint(path) for path in paths}
    return payloads, [model_from_checkpoint(path, device, payloads[path]) for path in paths]


def evaluate_command(args: argparse.Namespace) -> int:
    from ger_kernels.evaluation import checkpoint_labels, evaluate_model, write_metrics
    from ger_kernels.training import resolve_device

    device = resolve_device(args.device)
    payloads, loaded = _checkpoints(args.checkpoint, device)
    labels = checkpoint_labels(args.checkpoint, [c.model for _, c in loaded])
    rows, notes = {}, ["Test data:", ""]
    for label, path, (model, config) in zip(labels, args.checkpoint, loaded):
        test_set = _test_set(args.data, config, {path: payloads[path]}, args.no_split, args.cache_dir)
        print(f"{label}: {test_set.describe()}")
        rows[label], _ = evaluate_model(model, test_set, device, args.batch_size, args.amp)
        notes.append(f"- {label}: {test_set.describe()}")
    md_path, json_path = write_metrics(args.out, rows, "\n".join(notes))
    print(open(md_path).read())
    print(f"written: {md_path}, {json_path}")
    return 0


def equivariance_command(args: argparse.Namespace) -> int:
    from ger_kernels.evaluation import checkpoint_labels, prediction_flips, write_flip_report
    from ger_kernels.figures import equivariance_figure
    from ger_kernels.training import resolve_device

    device = resolve_device(args.device)
    payloads, loaded = _checkpoints(args.checkpoint, device)
    models = dict(zip(checkpoint_labels(args.checkpoint, [c.model for _, c in loaded]), (m for m, _ in loaded)))
    test_set = _test_set(args.data, loaded[0][1], payloads)
    print(f"test data: {test_set.describe()}")
    if not 0 <= args.slice < len(test_set):
        raise ValueError(f"--slice {args.slice} is out of range: the test data has {len(test_set)} slices, "
                         f"0..{len(test_set) - 1}")
    image, mask = test_set[args.slice]
    counts = equivariance_figure(models, image, mask, args.out, args.element)
    for name, count in counts.items():
        print(f"{name}: {count} pixels disagree after transforming back (g={args.element})")
    print(f"written: {args.out}")
    if args.all:
        flips = {name: prediction_flips(model, test_set, device, args.batch_size) for name, model in models.items()}
        md_path, json_path = write_flip_report(os.path.splitext(args.out)[0], flips, test_set)
        print(open(md_path).read())
        print(f"written: {md_path}, {json_path}")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    from ger_kernels.prediction import predict_volume
    from ger_kernels.training import model_from_checkpoint, resolve_device

    device = resolve_device(args.device)
    model, config = model_from_checkpoint(args.checkpoint, device)
    mask = predict_volume(model, args.input, args.output, config.size, args.batch_size, device)
    depth, height, width = mask.shape
    print(f"{args.output}: {int(mask.sum())} tumor voxels in {height}x{width}x{depth} (H x W x D, as stored)")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, except a flag's and None (their help says it in words)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.nargs == 0 or action.default is None:
            return action.help
        return super()._get_help_string(action)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Gives the options without help a help line, so that ``--help`` shows their defaults too."""
    for action in parser._actions:
        if action.help is None and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
            action.help = "(default: %(default)s)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    from ger_kernels.training import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="ger-unet", description=__doc__.split("\n\n")[0],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True,
                                     parser_class=functools.partial(argparse.ArgumentParser,
                                                                    formatter_class=_HelpFormatter))
    p = commands.add_parser("info", help="versions, backends, parameter counts")
    p.add_argument("--paths", action="store_true",
                   help="also the backend of each pass of each GER-UNet convolution under backend='auto' (one "
                        "forward on a random input; with GER_KERNELS_AUTO_TIMING=1 a first call on CUDA times the "
                        "passes the path table lacks)")
    p.add_argument("--size", type=int, default=64, help="with --paths: input height and width (a multiple of 8)")
    p.add_argument("--batch", type=int, default=4, help="with --paths")
    p.add_argument("--device", default="auto", help="with --paths: auto | cpu | cuda | cuda:N")
    p.set_defaults(run=info)

    p = commands.add_parser("check", help="equivariance and backend parity of a small p4m network")
    p.add_argument("--size", type=int, default=32, help="input height and width (even)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=check)

    p = commands.add_parser("demo", help="the main job on phantom data (a few minutes on 2 CPU cores)")
    p.add_argument("--out", default="demo_output")
    p.add_argument("--data", default="phantom")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start both runs over even if OUT/MODEL/last.pt exists")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=demo)

    p = commands.add_parser("train", help="train GER-UNet or R-UNet")
    p.add_argument("--model", choices=["ger-unet", "r-unet"], default=defaults.model)
    p.add_argument("--data", default=defaults.data, help="phantom | phantom:N | lits:PATH | folder:PATH")
    p.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    p.add_argument("--size", type=int, default=defaults.size)
    p.add_argument("--widths", type=int, nargs=4, default=None, help="default: the paper's")
    p.add_argument("--skip", choices=["add", "concat"], default=defaults.skip)
    p.add_argument("--group", choices=["p4m", "p4"], default=defaults.group)
    p.add_argument("--backend", default=defaults.backend,
                   help="auto | reference | cpp | triton: GER-UNet's convolutions (`ger-unet info` lists them)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help="per process: under torchrun the global batch is this x the number of processes")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--lr-decay", type=float, default=defaults.lr_decay, help="per-epoch factor")
    p.add_argument("--dice-weight", type=float, default=defaults.dice_weight)
    p.add_argument("--patience", type=int, default=defaults.patience, help="early stopping, in epochs")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random rotations/flips (default: on for r-unet, off for ger-unet)")
    p.add_argument("--all-slices", dest="tumor_only", action="store_false", help="also slices without tumor")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bfloat16 autocast on CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="model and batches in the channels_last memory format (default: on CUDA only)")
    p.add_argument("--nondeterministic", dest="deterministic", action="store_false",
                   help="allow nondeterministic (maybe faster) kernels")
    p.add_argument("--max-batches", type=int, default=None, help="per epoch (smoke runs)")
    p.add_argument("--cache-dir", default=None, help="disk cache of preprocessed slices")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=train_command)

    p = commands.add_parser("evaluate", help="the seven metrics on the test split, beside the paper's Table 1")
    p.add_argument("checkpoint", nargs="+")
    p.add_argument("--data", default=None, help="default: the data the checkpoint was trained on")
    p.add_argument("--out", default=".")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--no-split", action="store_true",
                   help="score every volume of --data (a separate test set), not the test side of its split")
    p.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast on CUDA (faster; default float32, as the equivariance figure)")
    p.set_defaults(run=evaluate_command)

    p = commands.add_parser("equivariance", help="the paper's Figure 1 as a PNG")
    p.add_argument("checkpoint", nargs="+")
    p.add_argument("--data", default=None)
    p.add_argument("--slice", type=int, default=0, help="index in the test split")
    p.add_argument("--element", type=int, default=1, choices=range(8), help="p4m element g (1 = quarter turn)")
    p.add_argument("--out", default="equivariance.png")
    p.add_argument("--all", action="store_true", help="also every test slice under every g = 1..7: totals "
                   "printed and written beside the figure (OUT without .png, plus .md and .json)")
    p.add_argument("--batch-size", type=int, default=4, help="for --all")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=equivariance_command)

    p = commands.add_parser("predict", help="NIfTI volume in, NIfTI tumor mask out (same affine)")
    p.add_argument("checkpoint")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=predict_command)

    for name, p in commands.choices.items():
        if name in ("train", "evaluate", "predict", "demo"):
            p.add_argument("--threads", type=_positive_int, default=None,
                           help="torch CPU threads (default: torch's, one per core; fewer can be faster on a "
                                "busy machine)")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error")
        _show_defaults(p)
    return parser


def _check_out_folder(path: str, option: str) -> None:
    """``path`` is a folder or can become one: the nearest existing part of it is a folder."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{option} {path}: {existing} is a file, not a folder")


def _check_data_source(source: str | None) -> None:
    kind, _, folder = (source or "").partition(":")
    if kind in ("lits", "folder") and folder and not os.path.isdir(folder):
        raise FileNotFoundError(f"--data {source}: the folder {folder} does not exist" if not os.path.exists(folder)
                                else f"--data {source}: {folder} is a file, not a folder")


def _check_arguments(args: argparse.Namespace) -> None:
    """The checks that need no data, before any is read and before any folder is created."""
    from ger_kernels.prediction import check_prediction_paths
    from ger_kernels.training import (check_checkpoint_path, check_resumable, check_runs_here, check_size,
                                      resolve_device)

    for name in ("size", "batch_size", "batch", "epochs", "patience", "max_batches"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.command == "train":
        config = _train_config(args)
        check_runs_here(config)
        if not args.no_resume:
            check_resumable(config)
    elif getattr(args, "device", None) is not None:
        resolve_device(args.device)
    if args.command == "demo" or args.command == "info" and args.paths:
        check_size(args.size)
    if args.command == "demo" and not args.no_resume:
        from ger_kernels.demo import demo_configs

        for config in demo_configs(args.out, args.data, args.size, args.epochs, args.batch_size, args.seed).values():
            check_resumable(config)
    if args.command == "check" and args.size % 2:
        raise ValueError(f"--size must be even (the check network pools once), got {args.size}")
    _check_data_source(getattr(args, "data", None))
    checkpoints = getattr(args, "checkpoint", [])
    for path in [checkpoints] if isinstance(checkpoints, str) else checkpoints:
        check_checkpoint_path(path)
    if args.command == "predict":
        check_prediction_paths(args.input, args.output)
    if args.command == "equivariance":
        if args.slice < 0:
            raise ValueError(f"--slice must be >= 0 (an index in the test split), got {args.slice}")
        if os.path.isdir(args.out):
            raise IsADirectoryError(f"--out {args.out} is a folder; give a file name such as "
                                    f"{os.path.join(args.out, 'equivariance.png')}")
        _check_out_folder(os.path.dirname(args.out) or ".", "--out")
    elif args.command in ("train", "evaluate", "demo"):
        _check_out_folder(args.out, "--out")


def _interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C left behind and how to go on."""
    again = "the same command without --no-resume" if getattr(args, "no_resume", False) else "the same command"
    if args.command == "train":
        last = os.path.join(args.out, "last.pt")
        if os.path.exists(last):
            return f"interrupted; {last} holds the last finished epoch: {again} resumes from it"
        return "interrupted before the first epoch finished; the same command starts again"
    if args.command == "demo":
        return f"interrupted; {again} resumes training from {args.out}/*/last.pt"
    return "interrupted"


# Bad arguments or input (files, data, diverging training): one line, not a traceback.
_EXPECTED_ERRORS = (ValueError, TypeError, OSError, FloatingPointError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train" and args.out is None:
        args.out = os.path.join("runs", args.model)
    try:
        _check_arguments(args)
        if getattr(args, "threads", None) is not None:
            torch.set_num_threads(args.threads)
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"ger-unet: {_interrupted(args)}", file=sys.stderr)
        return 130
    except _EXPECTED_ERRORS as error:
        if args.debug:
            raise
        print(f"ger-unet: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
