"""Published weights by name, against a local server that serves each source's real layout (`hubserver.FakeHub`).

The checkpoints are tiny real architectures with random weights, written in their publisher's layout: an HF
transformers SegFormer-B0 (`pytorch_model.bin`, as `nvidia/segformer-*` keep it) fetched through `HF_ENDPOINT`, an
mmseg SegNeXt-T checkpoint dict fetched from its download.openmmlab.com URL through `SEGLAB_WEIGHTS_MIRROR`, and a
timm ViT-Ti as a backbone. Each must load equal to the same file converted directly, be cached after the first
call (no request, no conversion the second time), and every bad download must be refused and removed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from hubserver import FakeHub, checkpoint_bytes, hf_segformer_b0_ade, point_seglab_at

import seglab
from seglab import registry
from seglab.convert import CONVERTERS, convert_checkpoint
from seglab.hub import table as table_module
from seglab.hub.download import WeightsDownloadError, cached_path, placed_path
from seglab.hub.table import BACKBONE_DATASETS, find_weights, load_table
from seglab.registry import CheckpointNote

transformers = pytest.importorskip("transformers")

IMAGE = torch.rand(1, 3, 67, 91, generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------------- the table
def test_every_registered_model_has_weights_or_a_reason():
    table = load_table()
    covered = {e.model for e in table.entries} | {u["model"] for u in table.unpublished}
    assert set(seglab.list_models()) <= covered, sorted(set(seglab.list_models()) - covered)
    assert {e.model for e in table.entries} <= set(seglab.list_models())
    for u in table.unpublished:
        assert u["reason"].strip(), u


def test_every_row_has_a_converter_and_a_fetch_kind():
    for e in load_table().entries:
        families = CONVERTERS.get(e.convert)
        assert families is not None, f"{e.name}: no converter source {e.convert!r}"
        assert any(e.model.startswith(prefix) for prefix in families), f"{e.name}: {e.convert} has no {e.model}"
        assert e.fetch in ("hub", "url", "manual")
        assert e.dataset in BACKBONE_DATASETS or e.dataset in _dataset_names(), e.name


def _dataset_names():
    from seglab.data.datasets import DATASETS

    return set(DATASETS)


def test_hash_fields_parse_and_match_the_file_names():
    rows = load_table().entries
    hashed = [e for e in rows if e.sha256]
    assert hashed, "the mmseg rows carry the sha256 prefix of their file names"
    for e in hashed:
        int(e.sha256, 16)
        stem = e.file_name.rsplit(".", 1)[0]
        if e.url and "-" in stem and e.convert in ("mmseg", "torchvision"):
            assert stem.endswith(e.sha256[:8]), f"{e.name}: {e.file_name} vs sha256 {e.sha256}"
    for e in rows:
        if e.md5:
            assert e.file_name.startswith("model_final_") and e.md5 in e.file_name, e.name


def test_tags_follow_the_scheme_and_each_model_has_one_default():
    import re

    pattern = re.compile(r"^(imagenet(22k)?(-[a-z0-9]+)*|[a-z0-9]+-\d+(x\d+)?(-[a-z0-9]+)*)$")
    defaults: dict[str, int] = {}
    for e in load_table().entries:
        assert pattern.match(e.tag), e.name
        defaults[e.model] = defaults.get(e.model, 0) + int(e.default)
        assert e.backbone_only == e.tag.startswith("imagenet"), e.name
        if not e.backbone_only and e.fetch != "manual":
            assert e.test.get("mode") in ("whole", "slide"), e.name
    assert all(n <= 1 for n in defaults.values()), defaults


def test_rows_that_name_a_config_match_its_test_pipeline():
    from seglab.config import load_config, test_pipeline

    root = Path(__file__).resolve().parents[2] / "configs"
    checked = 0
    for e in load_table().entries:
        if not e.config:
            continue
        pipeline = test_pipeline(load_config(root / e.config))
        assert pipeline["mean"] == list(e.mean) and pipeline["std"] == list(e.std), e.name
        got = {k: v for k, v in pipeline["test"].items() if v is not None}
        assert got == {k: (list(v) if isinstance(v, tuple) else v) for k, v in e.test.items()}, e.name
        checked += 1
    assert checked >= 20


def test_unknown_tags_and_models_are_named():
    with pytest.raises(KeyError, match="its tags: .*ade20k-512"):
        find_weights("segformer_b0", "ade20k-521")
    with pytest.raises(KeyError, match="CycleMLP|cyclemlp|never published"):
        seglab.create_model("fpn_cyclemlp_b1", pretrained="ade20k-512")


# ---------------------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server():
    hub = FakeHub().start()
    yield hub
    hub.stop()


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    return point_seglab_at(server, tmp_path, monkeypatch)


def _url_path(entry) -> str:
    """The request path of a row's file on the server (Hub API, or the mirrored URL)."""
    if entry.hub:
        return f"/{entry.hub.repo}/resolve/{entry.hub.revision}/{entry.hub.file}"
    return "/mirror" + urlsplit(entry.url).path


def _serve(server, entry, data: bytes) -> None:
    if entry.hub:
        server.add_hub_file(entry.hub.repo, entry.hub.file, data)
    else:
        server.add_file(_url_path(entry), data)


def _with_rows(monkeypatch, *rows) -> None:
    """The package table with these rows in place of the rows of the same model and tag."""
    table = load_table()
    by_name = {r.name: r for r in rows}
    entries = tuple(by_name.get(e.name, e) for e in table.entries)
    monkeypatch.setattr(table_module, "load_table", lambda: dataclasses.replace(table, entries=entries))


@pytest.fixture(scope="module")
def segformer_file() -> bytes:
    """An HF transformers SegFormer-B0 for ADE20K, random weights, in the format of the table's file."""
    return hf_segformer_b0_ade(find_weights("segformer_b0", "ade20k-512").file_name, seed=1)


@pytest.fixture(scope="module")
def segnext_file() -> bytes:
    """An mmseg 1.x SegNeXt-T checkpoint dict (meta + state_dict) for ADE20K, random weights."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conversion"))
    from test_segnext_convert import randomize, to_source

    state = to_source(randomize(registry.create_model("segnext_t", num_classes=150), seed=4).state_dict(), "mmseg")
    checkpoint = {"meta": {"dataset_meta": {"classes": ["wall"] * 150}}, "state_dict": state}
    return checkpoint_bytes(checkpoint, "segnext_mmseg.pth")


def _outputs(model) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(IMAGE)
    assert torch.isfinite(out).all()
    return out


def _direct(data: bytes, entry, tmp_path, num_classes=None) -> torch.nn.Module:
    """The same file converted with `seglab.convert` and loaded by hand: what a pretrained load must equal."""
    src = tmp_path / f"direct_{entry.file_name}"
    src.write_bytes(data)
    result = convert_checkpoint(src, entry.convert, entry.model, img_size=entry.img_size)
    model = registry.create_model(entry.model, num_classes=num_classes or result.num_classes, **result.overrides)
    model.load_state_dict(result.state_dict, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------- loading
def test_hub_weights_download_verify_convert_cache(env, segformer_file, tmp_path, monkeypatch):
    entry = find_weights("segformer_b0", "ade20k-512")
    assert entry.fetch == "hub" and entry.hub.repo.startswith("nvidia/")
    _serve(env, entry, segformer_file)
    model = seglab.create_model("segformer_b0", pretrained="ade20k-512", progress=False)
    assert env.count(_url_path(entry)) >= 1
    assert torch.equal(_outputs(model), _outputs(_direct(segformer_file, entry, tmp_path)))
    assert model.seglab_meta["classes"][:3] == ["wall", "building", "sky"] and model.num_classes == 150
    assert cached_path(entry).is_file()

    # the second load reads the cached safetensors: no request, no conversion
    env.requests.clear()
    monkeypatch.setattr("seglab.convert.convert_checkpoint", lambda *a, **k: pytest.fail("converted again"))
    again = seglab.create_model("segformer_b0", pretrained=True, progress=False)
    assert env.requests == []
    assert torch.equal(_outputs(again), _outputs(model))


def test_direct_url_through_the_mirror_with_its_hash(env, segnext_file, tmp_path, monkeypatch):
    import hashlib

    entry = find_weights("segnext_t", "ade20k-512")
    assert entry.fetch == "url" and entry.convert == "mmseg"
    # the random file gets the row's hash check: its own digest stands in for the publisher's
    row = dataclasses.replace(entry, sha256=hashlib.sha256(segnext_file).hexdigest()[:8])
    _with_rows(monkeypatch, row)
    _serve(env, entry, segnext_file)
    model = seglab.create_model("segnext_t", pretrained="ade20k-512", progress=False)
    assert env.count(_url_path(entry)) == 1  # the URL's path, on the mirror's host
    assert torch.equal(_outputs(model), _outputs(_direct(segnext_file, entry, tmp_path)))
    assert placed_path(entry).is_file()


@pytest.mark.parametrize("fault", ["corrupt", "truncate", "html"])
def test_bad_downloads_are_refused_and_removed(env, segnext_file, fault, monkeypatch):
    import hashlib

    entry = find_weights("segnext_t", "ade20k-512")
    digest = hashlib.sha256(segnext_file).hexdigest()
    _with_rows(monkeypatch, dataclasses.replace(entry, sha256=digest[:8]))
    _serve(env, entry, segnext_file)
    env.faults[_url_path(entry)] = fault
    with pytest.raises(WeightsDownloadError) as info:
        seglab.create_model("segnext_t", pretrained="ade20k-512", progress=False)
    message = str(info.value)
    assert env.url + _url_path(entry) in message
    if fault == "corrupt":
        assert f"expected {digest[:8]}" in message and "got " in message
    elif fault == "html":
        assert "HTML" in message
    else:
        assert "truncated" in message
    downloads = placed_path(entry).parent
    assert not any(downloads.iterdir()), list(downloads.iterdir())  # nothing kept, no partial file
    assert not cached_path(entry).exists()


@pytest.mark.parametrize("fault", ["truncate", "html", "corrupt"])
def test_bad_hub_files_are_refused_and_removed(env, segformer_file, fault):
    entry = find_weights("segformer_b0", "ade20k-512")
    _serve(env, entry, segformer_file)
    env.faults[_url_path(entry)] = fault
    with pytest.raises(WeightsDownloadError, match="removed") as info:
        seglab.create_model("segformer_b0", pretrained="ade20k-512", progress=False)
    assert entry.hub.repo in str(info.value)
    if fault == "corrupt":  # the Hub's LFS ETag is the file's SHA-256
        assert "Hub LFS" in str(info.value)
    blobs = list((Path(os.environ["HF_HUB_CACHE"])).rglob("blobs/*"))
    assert blobs == [], blobs
    env.faults.clear()  # the next call downloads again and succeeds
    seglab.create_model("segformer_b0", pretrained="ade20k-512", progress=False)


def test_offline_without_cache_names_the_file_to_place(env, segformer_file, segnext_file, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_entry = find_weights("segformer_b0", "ade20k-512")
    with pytest.raises(WeightsDownloadError) as info:
        seglab.create_model("segformer_b0", pretrained="ade20k-512", progress=False)
    assert "offline" in str(info.value) and str(placed_path(hub_entry)) in str(info.value)
    url_entry = find_weights("segnext_t", "ade20k-512")
    with pytest.raises(WeightsDownloadError) as info:
        seglab.create_model("segnext_t", pretrained="ade20k-512", progress=False)
    assert str(placed_path(url_entry)) in str(info.value) and urlsplit(url_entry.url).path in str(info.value)
    assert env.requests == []

    # a file placed there by hand is used, offline
    placed_path(hub_entry).parent.mkdir(parents=True)
    placed_path(hub_entry).write_bytes(segformer_file)
    model = seglab.create_model("segformer_b0", pretrained="ade20k-512", progress=False)
    assert model.num_classes == 150 and env.requests == []


def test_manual_rows_say_where_to_download(env):
    manual = [e for e in load_table().entries if e.fetch == "manual"]
    assert manual
    entry = manual[0]
    with pytest.raises(WeightsDownloadError) as info:
        seglab.create_model(entry.model, pretrained=entry.tag, progress=False)
    assert entry.manual["page"] in str(info.value) and str(placed_path(entry)) in str(info.value)


def test_another_class_count_keeps_all_but_the_classifier(env, segformer_file):
    entry = find_weights("segformer_b0", "ade20k-512")
    _serve(env, entry, segformer_file)
    full = seglab.create_model("segformer_b0", pretrained="ade20k-512", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(7)
        tuned = seglab.create_model("segformer_b0", pretrained="ade20k-512", num_classes=5, progress=False)
    notes = [str(w.message) for w in caught if issubclass(w.category, CheckpointNote)]
    assert len(notes) == 1 and "decode_head.classifier.weight" in notes[0] and "decode_head.classifier.bias" in notes[0]
    torch.manual_seed(7)
    fresh = registry.create_model("segformer_b0", num_classes=5)
    ours, theirs, init = tuned.state_dict(), full.state_dict(), fresh.state_dict()
    for key, value in ours.items():
        if key.startswith("decode_head.classifier."):
            assert torch.equal(value, init[key]), key  # the model's own initialisation
        else:
            assert torch.equal(value, theirs[key]), key
    assert tuned.model_overrides == full.model_overrides
    # any other difference stays an error
    with pytest.raises(ValueError, match="apart from its classifier"):
        seglab.create_model("segformer_b0", pretrained="ade20k-512", num_classes=5, head_channels=128,
                            progress=False)


def test_imagenet_backbone_by_tag(env, tmp_path):
    timm = pytest.importorskip("timm")
    entry = find_weights("segmenter_vit_t", "imagenet")
    model = timm.create_model(entry.hub.repo.split("/", 1)[1].split(".")[0] if entry.hub else "vit_tiny_patch16_384",
                              pretrained=False)
    data = checkpoint_bytes(model.state_dict(), entry.file_name)
    _serve(env, entry, data)
    ours = seglab.create_model("segmenter_vit_t", pretrained="imagenet", num_classes=4, progress=False)
    src = tmp_path / entry.file_name
    src.write_bytes(data)
    direct = convert_checkpoint(src, entry.convert, "segmenter_vit_t", img_size=entry.img_size)
    assert direct.backbone_only
    backbone = ours.state_dict()
    for key, value in direct.state_dict.items():
        assert torch.equal(backbone[key], value), key
    assert ours.num_classes == 4
    # a model built for another crop gets the position embedding resampled for it, cached apart
    small = seglab.create_model("segmenter_vit_t", pretrained="imagenet", img_size=96, progress=False)
    resampled = convert_checkpoint(src, entry.convert, "segmenter_vit_t", img_size=96).state_dict
    assert small.backbone.pos_embed.shape[1] == 1 + 6 * 6
    assert all(torch.equal(small.state_dict()[k], v) for k, v in resampled.items())
    assert cached_path(entry, 96).is_file() and cached_path(entry, 96) != cached_path(entry)


def test_save_pretrained_and_from_pretrained_are_bit_exact(env, segformer_file, tmp_path):
    entry = find_weights("segformer_b0", "ade20k-512")
    _serve(env, entry, segformer_file)
    model = seglab.create_model("segformer_b0", pretrained="ade20k-512", progress=False)
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model"] == "segformer_b0" and len(config["classes"]) == 150 and config["test"]["mode"] == "whole"
    card = (tmp_path / "saved" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: seglab") and ("mIoU" in card) == (entry.miou is not None)
    loaded = seglab.from_pretrained(tmp_path / "saved")
    assert torch.equal(_outputs(loaded), _outputs(model))
    assert loaded.seglab_meta["classes"] == model.seglab_meta["classes"]


def test_push_to_hub_and_back(env, tmp_path):
    torch.manual_seed(3)
    model = registry.create_model("segformer_b0", num_classes=3)
    url = model.push_to_hub("someone/tiny-segformer", classes=["bg", "cat", "dog"], metrics={"mIoU": 0.5})
    assert "someone/tiny-segformer" in url
    assert set(env.repos["someone/tiny-segformer"]) == {"config.json", "model.safetensors", "README.md"}
    pulled = seglab.from_pretrained("someone/tiny-segformer")
    assert torch.equal(_outputs(pulled), _outputs(model))
    assert pulled.seglab_meta["classes"] == ["bg", "cat", "dog"]


def test_predictor_uses_the_published_pipeline(env, segformer_file):
    from seglab.data.transforms import TestTransform
    from seglab.inference import predict

    entry = find_weights("segformer_b0", "ade20k-512")
    _serve(env, entry, segformer_file)
    predictor = seglab.Predictor("segformer_b0", pretrained="ade20k-512", device="cpu")
    image = (torch.rand(3, 120, 170, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    result = predictor(image)
    assert result.labels.shape == (120, 170) and len(result.classes) == 150
    transform = TestTransform(scale=entry.test["scale"], size_divisor=entry.test.get("size_divisor"))
    with torch.no_grad():
        expected = predict(predictor.model, transform(image)[0][None], mode="whole", out_size=(120, 170))
    assert (expected[0].argmax(0).numpy() == result.labels).all()
    assert predictor.transform.output_size(120, 170) == (512, 736)  # short side 512, sides to a multiple of 32
    overlay = result.overlay()
    assert overlay.shape[0] == 120 and overlay.shape[1] > 170  # the legend of the classes present


def test_two_processes_loading_at_once_download_once(env, segformer_file, tmp_path):
    entry = find_weights("segformer_b0", "ade20k-512")
    _serve(env, entry, segformer_file)
    script = ("import torch, seglab; m = seglab.create_model('segformer_b0', pretrained='ade20k-512', progress=False)"
              ".eval(); g = torch.Generator().manual_seed(0); x = torch.rand(1, 3, 64, 64, generator=g); "
              "print(repr(float(m(x).double().sum())))")
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outputs]
    assert outputs[0][0] == outputs[1][0]
    gets = [r for r in env.requests if r == ("GET", _url_path(entry))]
    assert len(gets) == 1, env.requests


def test_every_recipe_names_a_backbone_row():
    """The configs start from ImageNet weights by tag (`model.pretrained: imagenet`), as the papers' recipes do."""
    from seglab.config import load_config
    from seglab.engine.run import _looks_like_tag

    root = Path(__file__).resolve().parents[2] / "configs"
    checked = 0
    for path in sorted(root.glob("*/*.yaml")):
        if path.name.startswith("_"):
            continue
        model = load_config(path).model
        if model.pretrained is None:
            continue
        assert _looks_like_tag(model.pretrained), f"{path}: {model.pretrained}"
        assert find_weights(model.name, model.pretrained).backbone_only, path
        checked += 1
    assert checked >= 60


def test_configs_take_tags(env, segformer_file, tmp_path):
    """`model.init: TAG` starts the whole model from published weights (another class count: all but the
    classifier), `model.pretrained: TAG` the backbone; both through the same cache."""
    from seglab.config import load_config
    from seglab.engine.run import build_model

    entry = find_weights("segformer_b0", "ade20k-512")
    _serve(env, entry, segformer_file)
    config = load_config(None, ["model.name=segformer_b0", "model.init=ade20k-512"])
    with pytest.warns(CheckpointNote, match="classifier"):
        model = build_model(config, num_classes=6)
    full = seglab.create_model("segformer_b0", pretrained="ade20k-512", progress=False).state_dict()
    assert model.num_classes == 6
    assert torch.equal(model.state_dict()["backbone.stages.3.norm.weight"], full["backbone.stages.3.norm.weight"])
    config = load_config(None, ["model.name=segformer_b0", "model.pretrained=ade20k-512"])
    with pytest.raises(ValueError, match="model.init"):
        build_model(config, num_classes=6)
    config = load_config(None, ["model.name=segformer_b0", "model.pretrained=imagenet-21k"])
    with pytest.raises(KeyError, match="its tags"):
        build_model(config, num_classes=6)


def test_detectron2_pickles_load_arrays_and_nothing_else(tmp_path):
    import pickle

    import numpy as np

    from seglab.convert.common import read_source

    path = tmp_path / "model_final_abc123.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.res2.0.conv1.weight": np.ones((4, 3, 1, 1), np.float32)},
                     "__author__": "Detectron2 Model Zoo"}, f)
    state, _ = read_source(path)
    assert state["backbone.res2.0.conv1.weight"].shape == (4, 3, 1, 1)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    with open(path, "wb") as f:
        pickle.dump({"model": {"x": Payload()}}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        read_source(path)


def test_docs_weights_page_is_current():
    from seglab.hub.docs import render

    page = Path(__file__).resolve().parents[2] / "docs" / "weights.md"
    assert page.read_text(encoding="utf-8") == render(), "docs/weights.md is out of date: python -m seglab.hub.docs"


def test_training_checkpoints_with_numpy_metadata_load_without_running_code(tmp_path):
    """mmengine checkpoints keep numpy scalars in `meta` (best scores): readable with weights_only=True plus numpy's
    data constructors; a pickled callable is still refused."""
    import numpy as np

    from seglab.convert.common import read_source

    path = tmp_path / "iter_160000.pth"
    torch.save({"meta": {"hook_msgs": {"best_score": np.float64(0.4), "ids": np.arange(3)}},
                "state_dict": {"decode_head.conv_seg.weight": torch.ones(2, 3, 1, 1)}}, path)
    state, _ = read_source(path)
    assert list(state) == ["decode_head.conv_seg.weight"]

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    torch.save({"meta": Payload(), "state_dict": {}}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        read_source(path)
