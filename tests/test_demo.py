import json

from ger_kernels.demo import run_demo


def test_demo_writes_the_report(tmp_path):
    report = run_demo(str(tmp_path / "demo"), "phantom:3", size=16, epochs=1, batch_size=8, progress=False)
    text = open(report).read()
    for part in ("| R-UNet |", "| GER-UNet |", "GER-UNet (add) [paper]", "equivariance.png", "training.png"):
        assert part in text
    payload = json.load(open(tmp_path / "demo" / "report.json"))
    assert max(payload["equivariance_errors"]["GER-UNet"]) < 1e-5
    assert max(payload["equivariance_errors"]["R-UNet"]) > 1e-3
    assert payload["figure1_disagreement_pixels"]["GER-UNet"] == 0
    assert abs(payload["parameters"]["GER-UNet"] / payload["parameters"]["R-UNet"] - 1) < 0.01
    for name in ("equivariance.png", "training.png", "metrics.md", "metrics.json", "r-unet/best.pt",
                 "ger-unet/log.csv"):
        assert (tmp_path / "demo" / name).exists()
