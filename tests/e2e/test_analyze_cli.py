"""`seglab analyze erf | resolution | corruptions | errors` end to end on a tiny shapes split and SegFormer-B0 /
SegNeXt-T checkpoints: figures and reports written, numbers in range and consistent with `seglab eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

import seglab
from seglab.checkpoint import save_model
from seglab.cli.main import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two run configs on one generated split of 6 images (48 px), with random-weight checkpoints."""
    base = tmp_path_factory.mktemp("analyze")
    root = base / "shapes"
    assert main(["data", "shapes", "--out", str(root), "--n-train", "2", "--n-val", "6", "--size", "48",
                 "--seed", "2"]) == 0
    configs, checkpoints = [], []
    for name in ("segformer_b0", "segnext_t"):
        config = base / f"{name}.yaml"
        config.write_text(f"""
model: {{name: {name}, num_classes: 6}}
data:
  dataset: shapes
  root: {root}
  val_batch_size: 3
  train_transform: {{crop_size: [48, 48], scale: [48, 48]}}
""")
        checkpoint = base / f"{name}.safetensors"
        save_model(checkpoint, seglab.create_model(name, num_classes=6))
        configs.append(str(config))
        checkpoints.append(str(checkpoint))
    return base, configs, checkpoints


def _eval_miou(config, checkpoint, out):
    assert main(["eval", config, "--checkpoint", checkpoint, "--out", str(out)]) == 0
    return json.loads(out.read_text())["mIoU"]


def _report_ok(path, images: int):
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("src='data:image/png;base64,") == images
    assert "sha256" in page and "run config of" in page


def test_erf(setup, tmp_path):
    base, configs, checkpoints = setup
    out = tmp_path / "erf"
    assert main(["analyze", "erf", *configs, "segformer_b0", "--checkpoint", *checkpoints, "none",
                 "--num-images", "3", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["erf"]) == ["segformer_b0", "segnext_t", "segformer_b0#3"]
    assert "noise" in results["images"]["segformer_b0#3"] and "validation split" in results["images"]["segnext_t"]
    for label, fields in results["erf"].items():
        assert list(fields)[-1] == "head" and len(fields) == 5, label
        for name, r in fields.items():
            grad = np.load(out / f"erf_{label}_{name}.npy")
            assert grad.shape == tuple(r["size"]) and np.isfinite(grad).all() and (grad >= 0).all()
            assert 0 <= r["r50"] <= r["r90"] <= np.hypot(*r["size"])
    _report_ok(out / "report.html", 1)
    assert "seglab analyze erf " in (out / "report.html").read_text()  # the command that made it


def test_resolution_matches_eval_at_the_training_scale(setup, tmp_path):
    base, configs, checkpoints = setup
    out = tmp_path / "res"
    assert main(["analyze", "resolution", *configs, "--checkpoint", *checkpoints, "--sizes", "0.75,1,1.5",
                 "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())["resolution"]
    for config, checkpoint, (label, records) in zip(configs, checkpoints, results.items(), strict=True):
        assert [(r["mode"], r["scale"]) for r in records] == [(m, s) for m in ("whole", "slide")
                                                             for s in (0.75, 1.0, 1.5)]
        assert all(0 <= r["mIoU"] <= 1 and 0 <= r["aAcc"] <= 1 for r in records)
        at_one = [r["mIoU"] for r in records if r["scale"] == 1.0]
        # at the training size the image is one window: slide equals whole, and both equal `seglab eval`
        assert at_one[0] == at_one[1] == pytest.approx(_eval_miou(config, checkpoint, tmp_path / f"{label}.json"))
    assert (out / "resolution.png").stat().st_size > 10_000
    _report_ok(out / "report.html", 1)


def test_corruptions_are_deterministic_given_the_seed(setup, tmp_path):
    base, configs, checkpoints = setup
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["analyze", "corruptions", configs[0], "--checkpoint", checkpoints[0], "--corruptions",
                     "gaussian_noise,contrast,glass_blur", "--severities", "1,5", "--seed", "4", "--out", str(out),
                     "--no-progress"]) == 0
        runs.append(json.loads((out / "results.json").read_text())["corruptions"]["segformer_b0"])
    assert runs[0] == runs[1]
    r = runs[0]
    assert list(r["mIoU"]) == ["gaussian_noise", "contrast", "glass_blur"] and r["severities"] == [1, 5]
    values = [v for vs in r["mIoU"].values() for v in vs]
    assert all(0 <= v <= 1 for v in values) and r["mean"] == pytest.approx(np.mean(values))
    assert r["clean"] == pytest.approx(_eval_miou(configs[0], checkpoints[0], tmp_path / "clean.json"))
    _report_ok(tmp_path / "a" / "report.html", 2)


def test_corruptions_refuse_unknown_names(setup, tmp_path, capsys):
    base, configs, checkpoints = setup
    code = main(["analyze", "corruptions", configs[0], "--checkpoint", checkpoints[0], "--corruptions", "rain",
                 "--out", str(tmp_path)])
    assert code == 2 and "unknown corruption(s) rain" in capsys.readouterr().err


def test_errors(setup, tmp_path):
    base, configs, checkpoints = setup
    out = tmp_path / "err"
    assert main(["analyze", "errors", *configs, "--checkpoint", *checkpoints, "--worst", "2", "--out", str(out),
                 "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    for config, checkpoint, (label, r) in zip(configs, checkpoints, results.items(), strict=True):
        assert r["metrics"]["mIoU"] == pytest.approx(_eval_miou(config, checkpoint, tmp_path / f"{label}.json"))
        total = r["metrics"]["num_pixels"]
        assert total == 6 * 48 * 48 and int(np.sum(r["confusion"])) == total
        widths = sorted(int(d) for d in r["trimap"])
        assert widths == [3, 5, 10]
        bands = [r["trimap"][str(d)]["band_pixels"] for d in widths]
        assert bands == sorted(bands)  # a wider band holds more pixels
        for d in widths:
            t = r["trimap"][str(d)]
            assert t["band_pixels"] + t["interior_pixels"] == total
            assert 0 <= t["band_acc"] <= 1 and 0 <= t["interior_acc"] <= 1
        scores = [w["mIoU"] for w in r["worst"]]
        assert len(scores) == 2 and scores == sorted(scores)
        assert (out / f"{label}_confusion.png").is_file() and (out / f"{label}_worst.png").is_file()
    _report_ok(out / "report.html", 2 + 2 * 2)
