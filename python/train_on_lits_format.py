"""Train GER-UNet on LiTS-format NIfTI files, evaluate it with the paper's metrics and
segment a whole volume, using only the public API.

Without arguments it writes a few synthetic phantom volumes as `volume-N.nii.gz` /
`segmentation-N.nii.gz` into a temporary folder and runs a tiny configuration; point it
at a real LiTS folder with `python python/train_on_lits_format.py /data/LiTS --size 448
--epochs 300` (a GPU is advisable at that scale).
"""

import argparse
import os
import tempfile

from ger_kernels import data, metrics
from ger_kernels.evaluation import evaluate_model
from ger_kernels.prediction import predict_volume
from ger_kernels.training import TrainConfig, model_from_checkpoint, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lits_folder", nargs="?", help="default: synthetic phantom volumes in a temporary folder")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", help="run folder kept afterwards (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        folder = args.lits_folder
        if folder is None:
            folder = os.path.join(tmp, "lits")
            data.write_phantom_lits(folder, n_volumes=4, depth=6, size=64)
        train_set, test_set = data.open_dataset(f"lits:{folder}", args.size)
        print(f"train: {train_set.describe()}\ntest:  {test_set.describe()}")

        small = args.lits_folder is None
        config = TrainConfig(model="ger-unet", data=f"lits:{folder}", out=os.path.join(out, "run"), size=args.size,
                             widths=(4, 6, 8, 11) if small else None, epochs=args.epochs, batch_size=4,
                             lr=2e-3 if small else 2e-4)
        summary = train(config, train_set, progress=False)
        print(f"best validation Dice {summary['best_val_dice']:.3f} at epoch {summary['best_epoch']}")

        model, _ = model_from_checkpoint(os.path.join(config.out, "best.pt"))
        scores, _ = evaluate_model(model, test_set)
        print(metrics.format_table({"GER-UNet (this run)": scores}, include_paper=True))

        volume = sorted(f for f in os.listdir(folder) if f.startswith("volume-"))[0]
        mask = predict_volume(model, os.path.join(folder, volume), os.path.join(out, "prediction.nii.gz"), args.size)
        print(f"{volume}: predicted {int(mask.sum())} tumor voxels in a {tuple(mask.shape)} volume")


if __name__ == "__main__":
    main()
