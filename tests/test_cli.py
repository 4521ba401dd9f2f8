import csv
import json
import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import pytest
import torch

from ger_kernels import training
from ger_kernels.cli import main
from ger_kernels.data import write_phantom_lits
from ger_kernels.data.cache import file_fingerprint
from ger_kernels.training import TrainConfig, build_model, save_checkpoint
from data.lits_files import tiny_case, write_lits_case
from helpers import RunsCode


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """``--threads`` sets torch's threads for the process, as a command should; tests restore them."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def untrained(tmp_path):
    """The path of a checkpoint of an untrained tiny GER-UNet (16x16 input), trained "on" LiTS files of
    3 small phantom volumes in tmp_path/lits."""
    write_phantom_lits(str(tmp_path / "lits"), 3, depth=4, size=32)
    c = TrainConfig(data=f"lits:{tmp_path / 'lits'}", size=16, widths=(2, 3, 4, 5), out=str(tmp_path / "run"))
    path = str(tmp_path / "untrained.pt")
    save_checkpoint(path, {"config": c.to_dict(), "model": build_model(c).state_dict(), "epoch": 0})
    return path


def error_of(capsys, argv, status=2):
    """The one line ``main(argv)`` prints on stderr, after checking its exit status."""
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_check_prints_every_element_and_backend(capsys):
    assert main(["check", "--size", "16", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ") and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(8))
    assert all(float(r[1]) < 1e-10 and float(r[2]) < 1e-10 for r in rows)
    for backend in ("reference", "cpp", "triton"):
        assert f"  {backend}" in out
    assert "(SPEC bound 1e-10): OK" in out


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "reference  cpu   available" in out


def test_info_lists_the_opt_in_switches(capsys, monkeypatch):
    monkeypatch.setenv("GER_KERNELS_TRITON_BN", "1")
    monkeypatch.delenv("GER_KERNELS_CUTE", raising=False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"GER_KERNELS_TRITON_BN +on ", out) and re.search(r"GER_KERNELS_CUTE +off ", out)
    assert "GER_KERNELS_TRITON_UNVERIFIED" in out


def test_info_paths_reports_each_ger_unet_convolutions_paths(capsys):
    assert main(["info", "--paths", "--size", "8", "--batch", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "backend='auto', pass by pass: GER-UNet (paper widths), input (1, 3, 8, 8) on cpu:" in out
    table = out.split("pass by pass:")[1].splitlines()
    assert table[1].split() == ["layer", "input", "dtype", "forward", "input_grad", "weight_grad"]
    assert table[2].split() == ["input_layer.0", "1x3x8x8", "float32"] + ["reference", "[1]"] * 3
    assert table[-2].split()[:2] == ["output_layer.0", "1x184x8x8"]
    assert table[-1].startswith("  [1] auto on cpu without a measurement: cpp where W~ has >= 4 MiB")


def test_info_paths_checks_the_size(capsys):
    assert main(["info", "--paths", "--size", "12"]) == 2
    assert "size must be a positive multiple of 8" in capsys.readouterr().err


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "ger_kernels", "info"], capture_output=True, text=True)
    assert result.returncode == 0 and "backends:" in result.stdout


def test_bad_command():
    with pytest.raises(SystemExit):
        main(["train-everything"])


def test_workflow_train_evaluate_figure_predict(tmp_path, capsys):
    from ger_kernels.data import write_phantom_lits

    data = f"lits:{tmp_path / 'lits'}"
    write_phantom_lits(str(tmp_path / "lits"), 3, depth=4, size=32)
    runs = {}
    for model, widths in (("ger-unet", ["2", "3", "4", "5"]), ("r-unet", ["4", "5", "6", "7"])):
        runs[model] = tmp_path / model
        assert main(["train", "--model", model, "--data", data, "--out", str(runs[model]), "--size", "16",
                     "--widths", *widths, "--epochs", "2", "--batch-size", "4", "--quiet", "--device", "cpu",
                     "--threads", "1"]) == 0
        assert (runs[model] / "best.pt").exists() and (runs[model] / "log.csv").exists()
    checkpoints = [str(runs[m] / "best.pt") for m in runs]
    assert main(["evaluate", *checkpoints, "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    assert "| ger-unet (ger-unet) |" in (tmp_path / "eval" / "metrics.md").read_text()
    assert main(["equivariance", *checkpoints, "--out", str(tmp_path / "fig1.png")]) == 0
    assert (tmp_path / "fig1.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "ger-unet (ger-unet): 0 pixels disagree after transforming back (g=1)" in out
    assert main(["predict", checkpoints[0], str(tmp_path / "lits" / "volume-0.nii.gz"), str(tmp_path / "pred.nii.gz"),
                 "--device", "cpu", "--threads", "1"]) == 0
    assert nib.load(tmp_path / "pred.nii.gz").shape == (32, 32, 4)
    assert "tumor voxels in 32x32x4 (H x W x D, as stored)" in capsys.readouterr().out
    rows = list(csv.DictReader(open(runs["ger-unet"] / "log.csv")))
    assert [row["threads"] for row in rows] == ["1", "1"]


def test_info_reports_paper_parameter_counts(capsys):
    main(["info"])
    out = capsys.readouterr().out
    assert "GER-UNet add     12.74M  widths (23, 45, 91, 181)" in out
    assert "R-UNet add       12.72M  widths (64, 128, 256, 512)" in out


def write_folder_split(root):
    """PNG slices under root/train (cases p0-p2) and root/test (p3, p4), 2 slices per case, 16 x 16."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for side, cases in (("train", ["p0", "p1", "p2"]), ("test", ["p3", "p4"])):
        for case in cases:
            for z in range(2):
                mask = np.zeros((16, 16), np.uint8)
                r, c = rng.integers(0, 10, 2)
                mask[r:r + 5, c:c + 5] = 255
                image = (rng.uniform(0, 80, (16, 16)) + (mask > 0) * 150).astype(np.uint8)
                for kind, array in (("images", image), ("masks", mask)):
                    (root / side / kind).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array).save(root / side / kind / f"{case}_{z}.png")


def train_tiny(data, out, model="ger-unet"):
    widths = ["2", "3", "4", "5"] if model == "ger-unet" else ["4", "5", "6", "7"]
    assert main(["train", "--model", model, "--data", data, "--out", str(out), "--size", "16", "--widths", *widths,
                 "--epochs", "1", "--batch-size", "2", "--quiet", "--device", "cpu"]) == 0
    return str(out / "best.pt")


def test_evaluate_a_given_test_set_whole_with_unique_labels(tmp_path, capsys):
    write_folder_split(tmp_path / "data")
    data = f"folder:{tmp_path / 'data'}"
    first = train_tiny(data, tmp_path / "a" / "ger-unet")
    second = train_tiny(data, tmp_path / "b" / "ger-unet")
    assert main(["evaluate", first, second, "--out", str(tmp_path / "split"), "--device", "cpu"]) == 0
    assert main(["evaluate", first, second, "--data", f"folder:{tmp_path / 'data' / 'test'}", "--no-split",
                 "--out", str(tmp_path / "whole"), "--device", "cpu"]) == 0
    rows = {name: json.loads((tmp_path / name / "metrics.json").read_text())["ours"] for name in ("split", "whole")}
    assert list(rows["split"]) == ["ger-unet (a/ger-unet)", "ger-unet (b/ger-unet)"]
    for label in rows["split"]:
        assert rows["split"][label]["slices"] == rows["whole"][label]["slices"] == 4  # test/: 2 cases of 2 slices
        assert rows["split"][label]["dice"] == rows["whole"][label]["dice"]
    text = (tmp_path / "whole" / "metrics.md").read_text()
    assert f"- ger-unet (a/ger-unet): folder:{tmp_path / 'data' / 'test'} all volumes (slices with tumor): 4 slices, " \
           f"2 volumes, 16x16" in text
    assert "| method | slices | Dice | HD (px) |" in text and "| HD (mm) |" not in text  # PNGs have no spacing
    capsys.readouterr()
    err = error_of(capsys, ["evaluate", first, "--no-split", "--out", str(tmp_path / "leak"), "--device", "cpu"])
    assert re.match("ger-unet: error: --no-split scores every volume of --data, but folder:.* is what the "
                    "checkpoint was trained on", err), err
    err = error_of(capsys, ["evaluate", first, "--no-split", "--data", f"folder:{tmp_path}/a/../data/", "--out",
                            str(tmp_path / "leak"), "--device", "cpu"])
    assert err.startswith("ger-unet: error: --no-split scores every volume of --data"), err
    assert not (tmp_path / "leak").exists()


def test_scoring_refuses_the_cases_a_checkpoint_was_trained_on(tmp_path, capsys):
    """Whatever --data names: the checkpoint records its training cases' files, and a case to score with one of
    them (the same file, or a copy) is an error naming both."""
    root = tmp_path / "lits"
    for n in range(6):
        write_lits_case(root / f"batch{n // 3}", n, *tiny_case(seed=n))
    checkpoint = train_tiny(f"lits:{root}", tmp_path / "run")
    trained = {case["volume_id"]: case["images"] for case in training.load_checkpoint(checkpoint)["training_cases"]}
    assert len(trained) == 5 and all(len(files) == 1 for files in trained.values())  # 1 of 6 is its test split
    leaked = sorted(v for v in trained if int(v.split("-")[1]) < 3)  # in batch0
    copies = tmp_path / "copies"
    copies.mkdir()
    for (volume, fingerprint), in (trained[leaked[0]], trained[sorted(trained)[-1]]):
        assert file_fingerprint(volume) == fingerprint
        shutil.copy(volume, copies)
        shutil.copy(volume.replace("volume-", "segmentation-"), copies)
    evaluate = ["evaluate", checkpoint, "--out", str(tmp_path / "eval"), "--device", "cpu"]
    err = error_of(capsys, evaluate + ["--no-split", "--data", f"lits:{root}/batch0"])  # found recursively in training
    assert err.startswith(f"ger-unet: error: {checkpoint} was trained on {len(leaked)} of the 3 cases of "
                          f"lits:{root}/batch0 all volumes"), err
    volume = os.path.realpath(root / "batch0" / f"{leaked[0]}.nii.gz")
    assert f"{leaked[0]} ({volume}, training case {leaked[0]}'s)" in err
    for command in (evaluate, ["equivariance", checkpoint, "--out", str(tmp_path / "f.png"), "--device", "cpu"]):
        err = error_of(capsys, command + ["--data", f"lits:{copies}"])  # split mode: its test side is a copy
        assert f"was trained on 1 of the 1 cases of lits:{copies} test" in err
        assert re.search(rf"{copies}/volume-\d+\.nii\.gz, a copy of training case volume-\d+'s {root}/batch\d/", err)
    assert not (tmp_path / "eval").exists() and not (tmp_path / "f.png").exists()
    assert main(evaluate) == 0  # the test side of its own split
    payload = training.load_checkpoint(checkpoint)
    del payload["training_cases"]  # as written before checkpoints recorded it: only the source's path is checked
    save_checkpoint(checkpoint, payload)
    assert main(evaluate + ["--no-split", "--data", f"lits:{root}/batch0"]) == 0
    assert "--no-split scores every volume of --data, but" in error_of(capsys, evaluate + ["--no-split"])


def test_another_set_with_files_of_the_same_names_and_sizes_is_scored(tmp_path):
    """Uncompressed volumes of one shape have one size: a separate test set named like the training set is not
    taken for a copy of it (its volumes' fingerprints differ)."""
    for folder, seed in (("train", 0), ("test", 10)):
        for n in range(3):
            write_lits_case(tmp_path / folder, n, *tiny_case(seed=seed + n), extension=".nii")
    train_volume, test_volume = (tmp_path / folder / "volume-0.nii" for folder in ("train", "test"))
    assert os.path.getsize(train_volume) == os.path.getsize(test_volume)
    checkpoint = train_tiny(f"lits:{tmp_path / 'train'}", tmp_path / "run")
    assert main(["evaluate", checkpoint, "--no-split", "--data", f"lits:{tmp_path / 'test'}", "--out",
                 str(tmp_path / "eval"), "--device", "cpu"]) == 0


def test_a_phantom_checkpoint_keeps_the_phantom_rule(tmp_path, capsys):
    """Phantom volumes have no files: every phantom source shares the training volumes, so --no-split refuses them."""
    checkpoint = train_tiny("phantom:4", tmp_path / "run")
    cases = training.load_checkpoint(checkpoint)["training_cases"]
    assert [case["images"] for case in cases] == [[]] * len(cases) and len(cases) == 3
    err = error_of(capsys, ["evaluate", checkpoint, "--no-split", "--data", "phantom:6", "--device", "cpu"])
    assert err.startswith("ger-unet: error: --no-split scores every volume of --data, but phantom:6 is what the "
                          "checkpoint was trained on"), err
    assert main(["evaluate", checkpoint, "--out", str(tmp_path), "--device", "cpu"]) == 0


def test_equivariance_all_reports_totals_beside_the_figure(tmp_path, capsys):
    write_folder_split(tmp_path / "data")
    data = f"folder:{tmp_path / 'data'}"
    checkpoints = [train_tiny(data, tmp_path / model, model) for model in ("ger-unet", "r-unet")]
    out = tmp_path / "figure1.png"
    assert main(["equivariance", *checkpoints, "--all", "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["data", "figure1.json", "figure1.md", "figure1.png", "ger-unet", "r-unet"]
    report = json.loads((tmp_path / "figure1.json").read_text())["models"]
    assert report["ger-unet (ger-unet)"]["pixels"] == 0 and report["ger-unet (ger-unet)"]["slices"] == 4
    assert report["r-unet (r-unet)"]["slices"] == 4 and len(report["r-unet (r-unet)"]["pixels_per_g"]) == 7
    printed = capsys.readouterr().out
    assert "| ger-unet (ger-unet) | 4 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |" in printed
    err = error_of(capsys, ["equivariance", *checkpoints, "--slice", "4", "--out", str(tmp_path / "x.png"),
                            "--device", "cpu"])
    assert err.startswith("ger-unet: error: --slice 4 is out of range: the test data has 4 slices, 0..3"), err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["train", "--help"])
    assert exit.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--size SIZE (default: 448)", "--epochs EPOCHS (default: 300)", "--lr LR (default: 0.0002)",
                 "--model {ger-unet,r-unet} (default: ger-unet)", "run folder (default runs/MODEL)",
                 "--threads THREADS torch CPU threads (default: torch's, one per core"):
        assert text in out


def test_errors_are_one_line_messages(tmp_path, capsys, untrained):
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "out.nii.gz").mkdir()
    (tmp_path / "run").mkdir()
    for argv, message in [
        (["predict", untrained, str(tmp_path / "corrupt.nii.gz"), str(tmp_path / "mask.nii.gz")],
         f"{tmp_path / 'corrupt.nii.gz'}: cannot read as NIfTI"),
        (["predict", untrained, str(tmp_path / "lits" / "volume-0.nii.gz"), str(tmp_path / "out.nii.gz")],
         f"output {tmp_path / 'out.nii.gz'} is a folder; give a file name such as"),
        (["evaluate", str(tmp_path / "run")], f"checkpoint {tmp_path / 'run'} is a directory, not a checkpoint file\n"),
        (["train", "--data", "folder:/nonexistent/data", "--out", str(tmp_path / "new")],
         "--data folder:/nonexistent/data: the folder /nonexistent/data does not exist\n"),
        (["equivariance", untrained, "--slice", "9999", "--out", str(tmp_path / "f.png")],
         "--slice 9999 is out of range: the test data has 4 slices, 0..3"),
    ]:
        assert error_of(capsys, argv).startswith(f"ger-unet: error: {message}")
    save_checkpoint(str(tmp_path / "run" / "best.pt"), {"weights": 1})
    assert error_of(capsys, ["evaluate", str(tmp_path / "run")]).endswith(
        f"is a directory, not a checkpoint file; did you mean {tmp_path / 'run' / 'best.pt'}?\n")
    assert sorted(os.listdir(tmp_path)) == ["corrupt.nii.gz", "lits", "out.nii.gz", "run", "untrained.pt"]


@pytest.mark.parametrize("where", [0, -1])
def test_debug_shows_the_traceback(tmp_path, untrained, where):
    argv = ["predict", untrained, str(tmp_path / "lits" / "volume-0.nii.gz"), str(tmp_path / "mask.png")]
    argv.insert(len(argv) if where else 0, "--debug")
    with pytest.raises(ValueError, match="must end in .nii or .nii.gz"):
        main(argv)


def test_a_checkpoint_holding_code_is_refused_by_evaluate(tmp_path, capsys):
    torch.save({"config": {}, "model": {}, "epoch": 1, "x": RunsCode(tmp_path / "marker")}, str(tmp_path / "evil.pt"))
    err = error_of(capsys, ["evaluate", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "eval")])
    assert "refers to the Python object" in err and "refused unread" in err
    assert not (tmp_path / "marker").exists() and not (tmp_path / "eval").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--size", "30"], "size must be a positive multiple of 8 (GER-UNet and R-UNet halve it 3 times), got 30: "
                       "use a --size divisible by 8"),
    (["--backend", "foo"], "backend must be one of ('auto', 'reference', 'cpp', 'triton'), got 'foo'"),
    (["--backend", "triton"], "backend 'triton' cannot run on cpu: triton"),
    pytest.param(["--device", "cuda"], "device 'cuda': ",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
    (["--device", "cpu:0:1"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'cpu:0:1'"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--data", "lits:/nonexistent"], "--data lits:/nonexistent: the folder /nonexistent does not exist"),
    (["--out", "{tmp}/file/run"], "--out {tmp}/file/run: {tmp}/file is a file, not a folder"),
])
def test_train_checks_arguments_before_reading_or_creating(tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr("ger_kernels.data.open_dataset", None)  # reading data would fail differently
    (tmp_path / "file").write_text("a file")
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    out = ["--out", str(tmp_path / "run")] if "--out" not in arguments else []
    err = error_of(capsys, ["train", *out, "--device", "cpu", *arguments])
    assert err.startswith("ger-unet: error: " + message.replace("{tmp}", str(tmp_path))), err
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_train_checks_that_it_can_resume_before_reading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("ger_kernels.data.open_dataset", None)
    c = TrainConfig(out=str(tmp_path / "run"), size=16, lr=1e-3)
    save_checkpoint(str(tmp_path / "run" / "last.pt"), {"config": c.to_dict(), "model": {}, "epoch": 1})
    argv = ["train", "--out", str(tmp_path / "run"), "--size", "16", "--epochs", "5", "--device", "cpu"]
    assert error_of(capsys, argv).startswith(f"ger-unet: error: {tmp_path / 'run' / 'last.pt'} was written with "
                                             f"another configuration (lr 0.001 there, 0.0002 now; only ")


def test_demo_checks_that_both_runs_can_resume_before_reading(tmp_path, monkeypatch, capsys):
    """As train: a last.pt of another configuration is an error before any data is read, and --no-resume
    starts both runs over."""
    class Slices:
        def describe(self):
            return "stand-in"

    resumes = []

    def interrupted(config, train_set, resume, progress):
        resumes.append(resume)
        raise KeyboardInterrupt

    monkeypatch.setattr("ger_kernels.data.open_dataset", None)
    monkeypatch.setattr("ger_kernels.demo.train", interrupted)
    last = str(tmp_path / "ger-unet" / "last.pt")  # of the second run, GER-UNet's, with the paper's lr
    save_checkpoint(last, {"config": TrainConfig(size=16).to_dict(), "model": {}, "epoch": 1})
    argv = ["demo", "--out", str(tmp_path), "--size", "16", "--epochs", "2", "--quiet"]
    err = error_of(capsys, argv)
    assert err.startswith(f"ger-unet: error: {last} was written with another configuration (") and \
        "lr 0.0002 there, 0.002 now" in err and err.endswith("another --out, or --no-resume\n")
    monkeypatch.setattr("ger_kernels.data.open_dataset", lambda *args, **kwargs: (Slices(), Slices()))
    message = f"the same command without --no-resume resumes training from {tmp_path}/*/last.pt\n"
    assert error_of(capsys, argv + ["--no-resume"], 130) == f"ger-unet: interrupted; {message}"
    assert resumes == [False]


def test_check_and_demo_check_their_size(capsys):
    assert error_of(capsys, ["check", "--size", "15"]) == "ger-unet: error: --size must be even (the check network " \
                                                          "pools once), got 15\n"
    assert "use a --size divisible by 8" in error_of(capsys, ["demo", "--size", "60", "--out", "/nonexistent/demo"])


def test_threads_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["predict", "a.pt", "b.nii", "c.nii", "--threads", "0"])
    assert exit.value.code == 2 and "argument --threads: must be an integer >= 1, got '0'" in capsys.readouterr().err


def test_evaluate_scores_in_float32_unless_asked_for_autocast(tmp_path, monkeypatch):
    """The metrics of record come from float32 scores (bfloat16 can flip a pixel whose two scores are close);
    --amp asks for the autocast."""
    from ger_kernels import evaluation

    write_folder_split(tmp_path / "data")
    checkpoint = train_tiny(f"folder:{tmp_path / 'data'}", tmp_path / "run")
    seen = []

    def predict_batches(model, loader, device, amp):
        seen.append(amp)
        return training.predict_batches(model, loader, device, amp)

    monkeypatch.setattr(evaluation, "predict_batches", predict_batches)
    for extra in ([], ["--amp"]):
        assert main(["evaluate", checkpoint, "--out", str(tmp_path / "eval"), "--device", "cpu"] + extra) == 0
    assert seen == [False, True]


def test_evaluate_checks_its_out_folder_first(tmp_path, capsys):
    (tmp_path / "results").write_text("a file")
    (tmp_path / "model.pt").write_bytes(b"not read: the arguments are checked first")
    err = error_of(capsys, ["evaluate", str(tmp_path / "model.pt"), "--out", str(tmp_path / "results" / "eval")])
    results = tmp_path / "results"
    assert err == f"ger-unet: error: --out {results / 'eval'}: {results} is a file, not a folder\n"


def test_predict_refuses_its_input_as_output_before_loading_the_model(tmp_path, capsys):
    (volume, _), = write_phantom_lits(str(tmp_path), 1, depth=2, size=16)
    scan = open(volume, "rb").read()
    (tmp_path / "model.pt").write_bytes(b"not read: the arguments are checked first")
    os.symlink(volume, tmp_path / "link.nii.gz")
    err = error_of(capsys, ["predict", str(tmp_path / "model.pt"), volume, str(tmp_path / "link.nii.gz")])
    assert "is the input" in err and "would overwrite the scan" in err
    assert open(volume, "rb").read() == scan


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    class Slices:
        def describe(self):
            return "stand-in"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ger_kernels.data.open_dataset", lambda *args, **kwargs: (Slices(), None))
    monkeypatch.setattr(training, "train", interrupted)
    argv = ["train", "--out", str(tmp_path / "run"), "--size", "16", "--device", "cpu"]
    assert error_of(capsys, argv, 130) == ("ger-unet: interrupted before the first epoch finished; the same command "
                                           "starts again\n")
    c = TrainConfig(out=str(tmp_path / "run"), size=16, device="cpu")
    save_checkpoint(str(tmp_path / "run" / "last.pt"), {"config": c.to_dict(), "model": {}, "epoch": 1})
    assert error_of(capsys, argv, 130) == (f"ger-unet: interrupted; {tmp_path / 'run' / 'last.pt'} holds the last "
                                           f"finished epoch: the same command resumes from it\n")
    assert "the same command without --no-resume resumes" in error_of(capsys, argv + ["--no-resume"], 130)
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", *argv])


def test_equivariance_element_must_be_a_p4m_element(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["equivariance", "a.pt", "--element", "8"])
    assert exit.value.code == 2 and "argument --element: invalid choice: 8" in capsys.readouterr().err


def test_train_memory_format_flag():
    """--channels-last / --no-channels-last set TrainConfig.channels_last; without either it stays None
    (channels_last on CUDA only)."""
    from ger_kernels.cli import _parser, _train_config

    parse = lambda *flags: _train_config(_parser().parse_args(["train", "--device", "cpu", *flags]))  # noqa: E731
    assert [parse(*f).channels_last for f in ([], ["--channels-last"], ["--no-channels-last"])] == [None, True, False]
