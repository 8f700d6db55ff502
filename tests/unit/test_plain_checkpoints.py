"""Plain state dicts of seglab models (seglab's key names, no seglab metadata) as `--checkpoint`: a `.safetensors`
without metadata, a `.pth` / `.pt` (`torch.load(weights_only=True)`, `state_dict` / `model` wrappers unwrapped); the
class count read from the classifier and reported as a note; errors naming the file and the keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import seglab
from seglab.cli.main import main
from seglab.registry import CheckpointNote, class_dependent_keys, infer_num_classes

NOTE = "num_classes 7 inferred from decode_head.classifier.weight (7, 256, 1, 1)"


@pytest.fixture(scope="module")
def trained():
    """A segformer_b0 with 7 classes and non-default weights, and its state dict."""
    model = seglab.create_model("segformer_b0", num_classes=7).eval()
    with torch.no_grad():
        model.decode_head.classifier.bias.uniform_(-1.0, 1.0)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _write(path, state, wrapper=None):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))  # no metadata at all
    else:
        torch.save({wrapper: state, "iteration": 3} if wrapper else state, path)
    return path


@pytest.mark.parametrize(("name", "wrapper"), [("plain.safetensors", None), ("plain.pth", None),
                                               ("wrapped.pth", "state_dict"), ("wrapped.pt", "model")])
def test_plain_file_loads_with_num_classes_inferred(trained, tmp_path, name, wrapper):
    model, state = trained
    path = _write(tmp_path / name, state, wrapper)
    with pytest.warns(CheckpointNote, match=f"{path}: {NOTE.replace('(', '[(]').replace(')', '[)]')}"):
        loaded = seglab.create_model("segformer_b0", checkpoint=path).eval()
    assert loaded.num_classes == 7 and loaded.model_overrides == {}
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_explicit_num_classes_wins_and_a_mismatch_names_file_and_keys(trained, tmp_path):
    _, state = trained
    path = _write(tmp_path / "plain.pth", state)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointNote)  # nothing is inferred when the caller says it
        assert seglab.create_model("segformer_b0", num_classes=7, checkpoint=path).num_classes == 7
    with pytest.raises(ValueError) as info:
        seglab.create_model("segformer_b0", num_classes=5, checkpoint=path)
    message = str(info.value)
    assert f"checkpoint {path} does not fit the model segformer_b0" in message
    assert "decode_head.classifier.weight: file (7, 256, 1, 1) vs model (5, 256, 1, 1)" in message
    assert "decode_head.classifier.bias: file (7,) vs model (5,)" in message


def test_wrong_files_say_what_they_are(trained, tmp_path):
    _, state = trained
    # another variant: the classifier agrees, the backbone does not
    b1 = _write(tmp_path / "b1.pth", seglab.create_model("segformer_b1", num_classes=7).state_dict())
    with (pytest.warns(CheckpointNote, match="num_classes 7 inferred"),
          pytest.raises(ValueError, match=r"(?s)b1\.pth does not fit the model segformer_b0.*shape mismatches")):
        seglab.create_model("segformer_b0", checkpoint=b1)
    # backbone weights alone
    backbone = _write(tmp_path / "backbone.pth", {k: v for k, v in state.items() if k.startswith("backbone.")})
    with pytest.raises(ValueError, match=r"(?s)missing keys.*use it as the run config's `model.pretrained`"):
        seglab.create_model("segformer_b0", checkpoint=backbone)
    # another code base's names
    foreign = _write(tmp_path / "foreign.pth", {"segformer.encoder.block.0.0.mlp.dense1.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"(?s)foreign\.pth does not fit.*seglab convert --source"):
        seglab.create_model("segformer_b0", checkpoint=foreign)
    # not a state dict
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: expected a state dict"):
        seglab.create_model("segformer_b0", checkpoint=tmp_path / "list.pt")
    # classifier tensors that disagree
    bad = dict(state, **{"decode_head.classifier.bias": torch.zeros(9)})
    with pytest.raises(ValueError, match=r"disagree on num_classes \(decode_head.classifier.weight \(7, 256, 1, 1\) "
                                         r"-> 7, decode_head.classifier.bias \(9,\) -> 9\)"):
        seglab.create_model("segformer_b0", checkpoint=_write(tmp_path / "bad.pth", bad))


@pytest.mark.parametrize(("model_name", "key", "shape", "expected"), [
    ("maskformer_r50", "decode_head.predictor.class_embed.weight", (151, 256), 150),  # + "no object"
    ("segmenter_vit_t", "decode_head.cls_emb", (1, 19, 192), 19),  # classes along dim 1
    ("upernet_swin_t", "aux_heads.0.classifier.weight", (21, 256, 1, 1), 21),  # the auxiliary head alone
])
def test_the_class_dependent_tensors_are_found_per_family(model_name, key, shape, expected):
    keys = class_dependent_keys(model_name, {})
    assert key in keys
    count, note = infer_num_classes(model_name, {key: torch.empty(shape, device="meta")}, {})
    assert count == expected and note == f"num_classes {expected} inferred from {key} {shape}"
    assert infer_num_classes(model_name, {}, {}) is None


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


def test_predict_cli_reads_a_plain_pth_and_prints_the_note(trained, tmp_path, image_dir, capsys):
    _, state = trained
    path = _write(tmp_path / "segformer_b0_7cls.pth", state, "state_dict")
    assert main(["predict", "--model", "segformer_b0", "--checkpoint", str(path), str(image_dir),
                 "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"seglab predict: note: {path}: {NOTE}" in err and "Warning" not in err
    labels = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert labels.shape == (37, 53) and labels.max() < 7

    assert main(["predict", "--model", "segformer_b0", "--num-classes", "4", "--checkpoint", str(path),
                 str(image_dir), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"seglab predict: error: checkpoint {path} does not fit the model segformer_b0" in err
    assert "decode_head.classifier.weight: file (7, 256, 1, 1) vs model (4, 256, 1, 1)" in err


def test_eval_cli_reads_a_plain_safetensors(tmp_path, capsys):
    from seglab.data.synthetic import generate_shapes

    root = generate_shapes(tmp_path / "shapes", n_train=1, n_val=2, size=32, seed=1)
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name: segformer_b0}}\ndata: {{dataset: shapes, root: {root}}}\n")
    classes = len(seglab.data.datasets.read_dataset_meta(root)["classes"])
    path = _write(tmp_path / "plain.safetensors", seglab.create_model("segformer_b0", num_classes=classes).state_dict())
    assert main(["eval", str(config), "--checkpoint", str(path)]) == 0
    assert "mIoU" in capsys.readouterr().out


@pytest.mark.onnx
@pytest.mark.slow
def test_export_cli_reads_a_plain_pth(trained, tmp_path, capsys):
    pytest.importorskip("onnx")
    _, state = trained
    path = _write(tmp_path / "plain.pt", state)
    out = tmp_path / "b0.onnx"
    assert main(["export", "--model", "segformer_b0", "--checkpoint", str(path), "--out", str(out), "--height", "64",
                 "--width", "64"]) == 0
    assert out.is_file() and NOTE in capsys.readouterr().err
