"""The instance path through the `seglab` command line on a tiny synthetic instance set: data shapes-instances,
train (Mask R-CNN R50-FPN at 64 px, 2 iterations), eval (AP keys), predict (instance maps and masks), refine (BPR
with a random bpr_hrnet18s) and an exact resume."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.checkpoint import load_state_dict, read_checkpoint_meta
from seglab.cli.main import main
from seglab.instance import build_bpr, save_bpr

AP_KEYS = [f"{t}_{n}" for t in ("segm", "bbox", "boundary") for n in ("AP", "AP50", "AP75", "APs", "APm", "APl")]


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    root = tmp_path_factory.mktemp("inst") / "shapes_instances"
    assert main(["data", "shapes-instances", "--out", str(root), "--n-train", "6", "--n-val", "2", "--size", "64",
                 "--seed", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def run_config(instances, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "mrcnn.yaml"
    path.write_text(f"""
model:
  name: mask_rcnn_r50_fpn
  overrides: {{min_size: 64, max_size: 64, frozen_bn: false, trainable_layers: 5, box_detections_per_img: 5,
              box_batch_size_per_image: 32}}
data: {{dataset: coco_instances, root: {instances}, batch_size: 2}}
optim: {{name: sgd, lr: 0.002, momentum: 0.9, weight_decay: 1.0e-4}}
schedule: {{iters: 2, warmup_iters: 1, warmup_ratio: 0.1, policy: step, steps: [1], gamma: 0.1}}
eval: {{interval: 2}}
train: {{seed: 0, log_interval: 1, checkpoint_interval: 2, keep_checkpoints: 1}}
""")
    return path


@pytest.fixture(scope="module")
def trained(run_config, tmp_path_factory):
    work = tmp_path_factory.mktemp("work") / "a"
    assert main(["train", str(run_config), "--work-dir", str(work), "--no-progress"]) == 0
    return work


def test_data_layout(instances):
    assert len(list((instances / "images" / "train").glob("*.png"))) == 6
    val = json.loads((instances / "annotations" / "instances_val.json").read_text())
    assert len(val["images"]) == 2 and len(val["categories"]) == 6


def test_train_logs_and_checkpoint(trained):
    meta = read_checkpoint_meta(trained / "iter_2.safetensors")
    assert meta.model == "mask_rcnn_r50_fpn" and meta.num_classes == 7  # 6 shapes + background
    assert meta.overrides["min_size"] == 64
    records = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iter"] for r in train] == [1, 2]
    assert train[0]["lr"] == pytest.approx(0.0002) and train[1]["lr"] == pytest.approx(0.0002)  # warm-up, step
    assert {"loss", "loss_mask", "loss_classifier", "loss_objectness"} <= set(train[0])
    assert train[0]["loss"] == pytest.approx(sum(v for k, v in train[0].items() if k.startswith("loss_")), rel=1e-5)
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 1 and set(AP_KEYS) <= set(evals[0])
    assert json.loads((trained / "latest.json").read_text())["iteration"] == 2


def test_eval_returns_ap_keys(run_config, trained, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["eval", str(run_config), "--checkpoint", str(trained / "iter_2.safetensors"), "--out", str(out),
                 "--device", "cpu"]) == 0
    metrics = json.loads(out.read_text())
    assert set(AP_KEYS) <= set(metrics)
    assert all(v is None or 0.0 <= v <= 1.0 for v in metrics.values())
    assert "boundary" in capsys.readouterr().out


def test_predict_and_refine(run_config, trained, instances, tmp_path):
    image = instances / "images" / "val" / "00000.png"
    preds = tmp_path / "preds"
    assert main(["predict", "--config", str(run_config), "--checkpoint", str(trained / "iter_2.safetensors"),
                 str(image), "--out", str(preds), "--score-thresh", "0", "--device", "cpu"]) == 0
    ids = np.asarray(Image.open(preds / "00000.png"))
    with np.load(preds / "00000_masks.npz") as data:
        masks, scores = data["masks"], data["scores"]
    assert ids.shape == (64, 64) and masks.shape[1:] == (64, 64) and masks.dtype == bool
    assert len(masks) == len(scores) == len(json.loads((preds / "00000.json").read_text())) <= 5
    assert ids.max() <= len(masks)

    bpr = tmp_path / "bpr.safetensors"
    torch.manual_seed(0)
    save_bpr(bpr, build_bpr("bpr_hrnet18s"), "bpr_hrnet18s")
    # hand-made coarse masks: a 30x30 square and a disc of radius 12
    yy, xx = np.mgrid[:64, :64]
    coarse = np.stack([(yy >= 5) & (yy < 35) & (xx >= 5) & (xx < 35), (yy - 44) ** 2 + (xx - 44) ** 2 < 144])
    masks_file = tmp_path / "coarse.npz"
    np.savez(masks_file, masks=coarse)
    refined_dir = tmp_path / "refined"
    # 32 px patches: BPR takes no patch from an image no larger than the patch (64 px here)
    assert main(["refine", str(image), "--masks", str(masks_file), "--bpr", str(bpr), "--out", str(refined_dir),
                 "--patch-size", "32", "--device", "cpu"]) == 0
    pngs = sorted((refined_dir / "00000").glob("*.png"))
    assert [p.name for p in pngs] == ["000.png", "001.png"]
    for png in pngs:
        mask = np.asarray(Image.open(png))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    with np.load(refined_dir / "00000_refined.npz") as data:
        assert data["masks"].shape == (2, 64, 64) and np.array_equal(data["coarse"], coarse)
        # outside every patch the coarse mask is kept: 32 px patches centred on boundary pixels reach at most 16 px
        # beyond a mask's box, so pixel (63, 0) (28 px below the square, 31 px left of the disc) is in none
        assert not data["masks"][:, 63, 0].any()

    # coarse masks straight from the Mask R-CNN checkpoint
    from_detector = tmp_path / "from_detector"
    assert main(["refine", str(image), "--detector", str(trained / "iter_2.safetensors"), "--score-thresh", "0",
                 "--bpr", str(bpr), "--out", str(from_detector), "--patch-size", "32", "--device", "cpu"]) == 0
    with np.load(from_detector / "00000_refined.npz") as data:
        assert data["masks"].shape == masks.shape


def test_resume_gives_identical_weights(run_config, trained, tmp_path):
    work = tmp_path / "b"
    assert main(["train", str(run_config), "--work-dir", str(work), "--no-progress", "--stop-at", "1"]) == 0
    assert json.loads((work / "latest.json").read_text())["iteration"] == 1
    assert main(["train", str(run_config), "--work-dir", str(work), "--no-progress", "--resume"]) == 0
    straight, resumed = load_state_dict(trained / "iter_2.safetensors"), load_state_dict(work / "iter_2.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    iters = [json.loads(line)["iter"] for line in (work / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert iters == [1, 2]
