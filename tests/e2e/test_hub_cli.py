"""The weights by name from the command line, against the local stand-in Hub (`hubserver.FakeHub`): `seglab
weights`, `seglab predict --pretrained`, and a run trained with `seglab train`, pushed with `seglab push` and pulled
back (`seglab predict --from-pretrained`, `seglab.from_pretrained`) with bit-exact outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hubserver import FakeHub, hf_segformer_b0_ade, point_seglab_at
from PIL import Image

import seglab
from seglab.cli.main import main
from seglab.hub.table import find_weights

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def server():
    hub = FakeHub().start()
    entry = find_weights("segformer_b0", "ade20k-512")
    hub.add_hub_file(entry.hub.repo, entry.hub.file, hf_segformer_b0_ade(entry.file_name, seed=5))
    yield hub
    hub.stop()


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    return point_seglab_at(server, tmp_path, monkeypatch)


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (97, 130, 3), dtype=np.uint8)).save(path)
    return path


def test_weights_listing(env, capsys):
    assert main(["weights", "segformer_b0"]) == 0
    out = capsys.readouterr().out
    assert "ade20k-512" in out and "cityscapes-1024" in out and "imagenet" in out
    assert main(["weights", "no_such_model"]) == 1


def test_predict_with_published_weights(env, photo, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", "--model", "segformer_b0", "--pretrained", "ade20k-512", str(photo), "--out",
                 str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "segformer_b0:ade20k-512: 150 classes, whole inference" in printed
    labels = np.asarray(Image.open(out / "photo.png"))
    overlay = Image.open(out / "photo_overlay.png")
    assert labels.shape == (97, 130) and overlay.size[1] == 97 and overlay.size[0] > 130  # legend on the right
    expected = seglab.Predictor("segformer_b0", pretrained="ade20k-512", device="cpu")(photo).labels
    assert (labels == expected).all()
    assert main(["weights", "segformer_b0:ade20k-512"]) == 0
    assert "yes" in capsys.readouterr().out  # cached now


def test_trained_model_pushed_and_pulled_back(env, tmp_path, photo, capsys):
    root = tmp_path / "shapes"
    assert main(["data", "shapes", "--out", str(root), "--n-train", "6", "--n-val", "2", "--size", "40",
                 "--seed", "3"]) == 0
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model: {{name: segformer_b0, overrides: {{drop_path_rate: 0.0}}}}
data:
  dataset: shapes
  root: {root}
  batch_size: 2
  train_transform: {{crop_size: [32, 32], scale: [40, 40]}}
  test_transform: {{scale: [48, 40]}}
schedule: {{iters: 2, warmup_iters: 1}}
eval: {{interval: 2}}
train: {{checkpoint_interval: 2, log_interval: 1}}
""")
    work = tmp_path / "work"
    assert main(["train", str(config), "--work-dir", str(work), "--no-progress"]) == 0
    checkpoint = work / "iter_2.safetensors"
    assert main(["push", str(checkpoint), "me/shapes-b0", "--miou", "0.5"]) == 0
    assert set(env.repos["me/shapes-b0"]) == {"config.json", "model.safetensors", "README.md"}
    capsys.readouterr()

    trained = seglab.create_model("segformer_b0", checkpoint=checkpoint).eval()
    pulled = seglab.from_pretrained("me/shapes-b0")
    x = torch.rand(1, 3, 45, 61, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(trained(x), pulled(x))
    assert pulled.seglab_meta["classes"] == ["background", "disc", "square", "triangle", "ring", "star"]
    assert pulled.seglab_meta["test"]["scale"] == [48, 40]

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert main(["predict", "--from-pretrained", "me/shapes-b0", str(photo), "--out", str(theirs)]) == 0
    assert main(["predict", "--config", str(config), "--checkpoint", str(checkpoint), str(photo), "--out",
                 str(ours)]) == 0
    assert (np.asarray(Image.open(ours / "photo.png")) == np.asarray(Image.open(theirs / "photo.png"))).all()


def test_push_needs_a_destination(tmp_path):
    with pytest.raises(SystemExit, match="REPO_ID .* or --dir"):
        main(["push", str(tmp_path / "best.safetensors")])
