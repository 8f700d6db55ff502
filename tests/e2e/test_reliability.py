"""Training that loses nothing, for every task on the run loop (semantic segmentation, Mask R-CNN, BPR): NaN losses,
kill -9 at random moments, a full disk; and, for semantic runs, fine-tuning from another task and bad samples."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import seglab
import seglab.checkpoint as checkpoint_module
from seglab.checkpoint import save_model
from seglab.cli.main import main, run_training
from seglab.config import load_config
from seglab.data.coco_instances import CocoInstances
from seglab.data.synthetic import generate_shapes
from seglab.data.synthetic_instances import generate_shapes_instances
from seglab.engine.instance import InstanceTrainer, load_instance_checkpoint, run_instance_training
from seglab.engine.loop import CheckpointWriteError, NonFiniteLossError
from seglab.engine.refine import BPRTrainer, train_bpr
from seglab.engine.trainer import Trainer
from seglab.instance.bpr_dataset import load_bpr

TASKS = ["semantic", "mask_rcnn", "bpr"]
# the longest runs (Mask R-CNN's 6 s disk-full runs, the 15-27 s kills) run in `make test-all` (marker `slow`)
SLOW_MASK_RCNN = ["semantic", pytest.param("mask_rcnn", marks=pytest.mark.slow), "bpr"]
SLOW_BEYOND_SEMANTIC = ["semantic", pytest.param("mask_rcnn", marks=pytest.mark.slow),
                        pytest.param("bpr", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes"), n_train=10, n_val=3, size=40, seed=4)


@pytest.fixture(scope="module")
def config_path(shapes_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(f"""
model: {{name: segformer_b0}}
data:
  dataset: shapes
  root: {shapes_root}
  batch_size: 2
  val_batch_size: 3
  train_transform: {{crop_size: [32, 32], scale: [40, 40]}}
optim: {{name: sgd, lr: 0.01, momentum: 0.9}}
schedule: {{iters: 6, warmup_iters: 1}}
eval: {{interval: 100}}
train: {{checkpoint_interval: 2, log_interval: 1, keep_checkpoints: 3, threads: 1}}
""")
    return path


@pytest.fixture(scope="module")
def instance_config_path(tmp_path_factory):
    root = generate_shapes_instances(tmp_path_factory.mktemp("instances") / "d", 4, 1, 64, 1)
    path = tmp_path_factory.mktemp("cfg") / "mrcnn.yaml"
    path.write_text(f"""
model:
  name: mask_rcnn_r50_fpn
  overrides: {{min_size: 64, max_size: 64, trainable_layers: 0, box_detections_per_img: 5,
              box_batch_size_per_image: 16}}
data: {{dataset: coco_instances, root: {root}, batch_size: 1}}
optim: {{name: sgd, lr: 0.002, momentum: 0.9, weight_decay: 1.0e-4, grad_clip: 5.0}}
schedule: {{iters: 6, warmup_iters: 1, warmup_ratio: 0.1, policy: step, steps: [4], gamma: 0.1}}
eval: {{interval: 100}}
train: {{seed: 0, checkpoint_interval: 2, log_interval: 1, keep_checkpoints: 3, threads: 1}}
""")
    return path


def _coarse(masks, grid=8):
    """Mask R-CNN-like coarse masks: area-downsampled to grid x grid, bilinearly upsampled, thresholded."""
    m = masks.float()[:, None]
    small = F.interpolate(m, size=(grid, grid), mode="area")
    return F.interpolate(small, size=m.shape[-2:], mode="bilinear", align_corners=False)[:, 0] > 0.5


@pytest.fixture(scope="module")
def bpr_data_path(tmp_path_factory):
    """BPR's inputs (images, coarse masks, ground truth) of 3 shape images, saved for the subprocesses too."""
    root = generate_shapes_instances(tmp_path_factory.mktemp("bpr") / "d", 3, 0, size=64, seed=0)
    data = {"images": [], "coarse": [], "gt": []}
    for image, target in CocoInstances(root / "annotations" / "instances_train.json", root / "images" / "train"):
        data["images"].append((image * 255).round().to(torch.uint8))
        data["gt"].append({"masks": target["masks"], "labels": target["labels"]})
        data["coarse"].append({"masks": _coarse(target["masks"]), "labels": target["labels"]})
    path = root.parent / "bpr_data.pt"
    torch.save(data, path)
    return path


BPR_SCRIPT = """
import ast
import sys

import torch

from seglab.engine.refine import train_bpr

torch.set_num_threads(1)
data_path, work, settings, resume = sys.argv[1], sys.argv[2], ast.literal_eval(sys.argv[3]), sys.argv[4] == "resume"
data = torch.load(data_path, weights_only=True)
train_bpr(data["images"], data["coarse"], data["gt"], work_dir=work, resume=resume, **settings)
"""


class Task:
    """One training task as these tests drive it: a run in this process, the same run as a command, and how its
    checkpoints load. `settings`: iters, checkpoint_interval, keep_checkpoints, max_bad_losses."""

    def __init__(self, name, loop_class, source):
        self.name, self.loop_class, self.source = name, loop_class, source
        self.has_cli = name != "bpr"

    def _sets(self, work, settings):
        keys = {"iters": "schedule.iters", "checkpoint_interval": "train.checkpoint_interval",
                "keep_checkpoints": "train.keep_checkpoints", "max_bad_losses": "train.max_bad_losses"}
        return [f"train.work_dir={work}", *(f"{keys[k]}={v}" for k, v in settings.items())]

    def _bpr_settings(self, settings):
        return {"iters": 6, "checkpoint_interval": 2, "keep_checkpoints": 3, "batch_size": 4, "patch_size": 16,
                "input_size": 64, "seed": 0, "log_every": 1, **settings}

    def train(self, work, resume=False, **settings):
        if self.name == "semantic":
            run_training(load_config(self.source, self._sets(work, settings)), resume=resume, progress=False)
        elif self.name == "mask_rcnn":
            run_instance_training(load_config(self.source, self._sets(work, settings)), resume=resume,
                                  progress=False, device="cpu")
        else:
            data = torch.load(self.source, weights_only=True)
            train_bpr(data["images"], data["coarse"], data["gt"], work_dir=work, resume=resume,
                      **self._bpr_settings(settings))

    def command(self, work, resume=False, **settings):
        if self.name == "bpr":
            script = work.parent / "train_bpr.py"
            script.write_text(BPR_SCRIPT)
            return [sys.executable, str(script), str(self.source), str(work), repr(self._bpr_settings(settings)),
                    "resume" if resume else "start"]
        sets = [item for s in self._sets(work, settings)[1:] for item in ("--set", s)]
        return [sys.executable, "-m", "seglab.cli", "train", str(self.source), "--work-dir", str(work),
                "--no-progress", *sets, *(["--resume"] if resume else [])]

    def load(self, path):
        """The model rebuilt from a checkpoint file (it must load)."""
        if self.name == "semantic":
            return seglab.create_model("segformer_b0", checkpoint=str(path))
        if self.name == "mask_rcnn":
            return load_instance_checkpoint(path)
        return load_bpr(path)


@pytest.fixture(params=TASKS)
def task(request, tmp_path):
    if request.param == "semantic":
        yield Task("semantic", Trainer, request.getfixturevalue("config_path"))
    elif request.param == "mask_rcnn":
        yield Task("mask_rcnn", InstanceTrainer, request.getfixturevalue("instance_config_path"))
    else:
        yield Task("bpr", BPRTrainer, request.getfixturevalue("bpr_data_path"))
    # Mask R-CNN checkpoints are ~250 MB a pair: give the space back at once
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".safetensors", ".pt", ".tmp"):
            path.unlink()


def latest(work_dir):
    return json.loads((work_dir / "latest.json").read_text())


def latest_weights(work_dir):
    return load_file(work_dir / latest(work_dir)["weights"])


def log_records(work_dir):
    return [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]


def nan_at_calls(monkeypatch, task, calls):
    """Makes the loss of the given (1-based) training steps of `task` NaN."""
    real = task.loop_class.loss
    count = [0]

    def loss(self, outputs, batch):
        count[0] += 1
        value, parts = real(self, outputs, batch)
        return (value * float("nan") if count[0] in calls else value), parts

    monkeypatch.setattr(task.loop_class, "loss", loss)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(task, tmp_path, monkeypatch, capsys):
    work = tmp_path / "nan"
    nan_at_calls(monkeypatch, task, {5})
    if task.has_cli:  # the command reports it and fails
        assert main(task.command(work)[3:]) == 1
        message = capsys.readouterr().err
    else:
        with pytest.raises(NonFiniteLossError) as info:
            task.train(work)
        message = str(info.value)
    assert "loss is nan at iteration 5" in message and "iter_4.safetensors" in message
    assert "max_bad_losses" in message
    assert latest(work)["iteration"] == 4  # nothing was written after the bad step
    assert not (work / "iter_6.safetensors").exists()
    assert all(torch.isfinite(v).all() for v in latest_weights(work).values())
    task.load(work / "iter_4.safetensors")


def test_bad_steps_can_be_skipped_up_to_a_bound(task, tmp_path, monkeypatch):
    work = tmp_path / "skip"
    nan_at_calls(monkeypatch, task, {2, 3})
    task.train(work, iters=4, checkpoint_interval=1, keep_checkpoints=0, max_bad_losses=2)
    records = log_records(work)
    assert [r["iter"] for r in records if r["kind"] == "skip"] == [2, 3]
    assert [r["iter"] for r in records if r["kind"] == "train"] == [1, 4]
    assert torch.load(work / "iter_4.state.pt", weights_only=True)["bad_steps"] == 2
    # the skipped steps left weights and normalisation statistics alone; the next step moved them
    after = [load_file(work / f"iter_{i}.safetensors") for i in (1, 2, 3, 4)]
    assert all(torch.equal(after[0][k], after[i][k]) for i in (1, 2) for k in after[0])
    assert any(not torch.equal(after[0][k], after[3][k]) for k in after[0])

    nan_at_calls(monkeypatch, task, {1, 2, 3})  # one more than allowed
    with pytest.raises(NonFiniteLossError, match="bad steps: 3, allowed: train.max_bad_losses=2"):
        task.train(tmp_path / "over", iters=4, max_bad_losses=2)


@pytest.mark.parametrize("task", SLOW_MASK_RCNN, indirect=True)
@pytest.mark.parametrize("fail", ["weights", "state"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(task, tmp_path, monkeypatch, fail):
    work = tmp_path / "full"
    real_save_file, real_torch_save = checkpoint_module.save_file, torch.save

    def save_file(tensors, path, metadata=None):
        if fail == "weights" and metadata.get("iteration") == "4":
            real_save_file(tensors, path, metadata=metadata)  # a partial file, then safetensors' own error type
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        real_save_file(tensors, path, metadata=metadata)

    def torch_save(obj, f, *args, **kwargs):
        if fail == "state" and isinstance(obj, dict) and obj.get("iteration") == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_torch_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    monkeypatch.setattr(torch, "save", torch_save)
    with pytest.raises(CheckpointWriteError, match="disk full while saving the checkpoint of iteration 4") as info:
        task.train(work)
    assert info.value.errno == errno.ENOSPC
    assert "iter_2.safetensors (iteration 2), is untouched" in str(info.value)
    assert latest(work)["iteration"] == 2
    # the new checkpoint's files and temporaries are gone (they only took space); iteration 2's are whole
    assert sorted(p.name for p in work.iterdir() if p.name.startswith((".", "iter_"))) == [
        "iter_2.safetensors", "iter_2.state.pt"]
    task.load(work / "iter_2.safetensors")

    monkeypatch.undo()  # space freed: the run continues from iteration 2
    task.train(work, resume=True)
    assert latest(work)["iteration"] == 6
    assert [r["iter"] for r in log_records(work) if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_init_from_loads_the_matching_part_and_reports_the_rest(config_path, tmp_path, capsys):
    source = seglab.create_model("segformer_b0", num_classes=3)
    save_model(tmp_path / "three.safetensors", source)
    work = tmp_path / "finetune"
    # lr 0: the trained parameters are the initial ones, to compare with the file (BN statistics still move)
    assert main(["train", str(config_path), "--work-dir", str(work), "--no-progress", "--init-from",
                 str(tmp_path / "three.safetensors"), "--set", "optim.lr=0.0", "--set", "schedule.iters=1",
                 "--set", "train.checkpoint_interval=1"]) == 0
    out = capsys.readouterr().out
    assert "skipped, other shape (2)" in out
    assert "decode_head.classifier.weight: file (3, 256, 1, 1) vs model (6, 256, 1, 1)" in out
    tuned = latest_weights(work)
    for key, value in source.named_parameters():
        if key.startswith("decode_head.classifier."):
            assert tuned[key].shape[0] == 6
        else:
            assert torch.equal(tuned[key], value), key
    assert load_config(work / "config.yaml").train.init_from == str(tmp_path / "three.safetensors")

    # a file with nothing in common is an error, not a silent random initialisation
    torch.save({"foo": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="none of its 1 tensors matches"):
        run_training(load_config(config_path, [f"train.work_dir={tmp_path / 'x'}"]), progress=False,
                     init_from=str(tmp_path / "other.pt"))


def _wait(proc, condition, timeout=120.0):
    """Polls `condition()` every millisecond until it holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(0.001)
    raise TimeoutError("training subprocess made no progress")


@pytest.mark.parametrize("task", SLOW_BEYOND_SEMANTIC, indirect=True)
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(task, tmp_path):
    settings = {"iters": 8, "checkpoint_interval": 1, "keep_checkpoints": 2}
    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses' thread count: the same kernels, bit-identical results
    try:
        task.train(reference, **settings)
    finally:
        torch.set_num_threads(threads)

    work = tmp_path / "killed"
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills, killed_while_writing = 0, 0
    for launch in range(8):
        start = latest(work)["iteration"] if (work / "latest.json").exists() else 0
        if launch == 3:  # a kill can leave temporaries; plant some more, resume must not trip over them
            (work / ".iter_7.safetensors.k2j4x9.tmp").write_bytes(b"\0" * 100)
            (work / ".latest.json.a8f1z0.tmp").write_text('{"iteration": 7, "weig')
        proc = subprocess.Popen(task.command(work, resume=start > 0, **settings), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 3:
            # let this launch complete a checkpoint, so every launch makes progress, then strike
            progressed = _wait(proc, lambda s=start: (work / "latest.json").exists() and latest(work)["iteration"] > s)
            if progressed and kills == 1:  # in the middle of writing a checkpoint file
                if _wait(proc, lambda: any(work.glob(".*.tmp"))):
                    killed_while_writing += 1
            elif progressed:
                time.sleep(rng.uniform(0.0, 0.3))  # anywhere: data, forward, backward, a write, the log
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            continue
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()[-3000:]
        break
    assert kills == 3 and killed_while_writing == 1
    assert latest(work)["iteration"] == 8
    assert not list(work.glob(".*.tmp"))
    # the log holds each iteration once: records written after a resumed checkpoint (or cut short) were dropped
    assert [r["iter"] for r in log_records(work) if r["kind"] == "train"] == list(range(1, 9))
    resumed, expected = latest_weights(work), latest_weights(reference)
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key
    if task.name == "bpr":  # the loss history survived the kills too
        history = [json.loads((w / "train_log.json").read_text())["losses"] for w in (work, reference)]
        assert history[0] == history[1] and len(history[0]) == 8


def test_bad_training_sample_stops_or_is_skipped(shapes_root, config_path, tmp_path):
    import shutil

    from seglab.data.datasets import DatasetError

    broken = tmp_path / "broken"
    shutil.copytree(shapes_root, broken)
    bad = broken / "annotations" / "train" / "00003.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    config = load_config(config_path, [f"data.root={broken}", f"train.work_dir={tmp_path / 'stop'}",
                                       "schedule.iters=5", "data.batch_size=2"])
    # 5 iterations x 2 samples cover all 10 training images once, the truncated one included
    with pytest.raises(DatasetError, match="00003.png"):
        run_training(config, progress=False)

    config.data.on_bad_sample = "skip"
    config.train.work_dir = str(tmp_path / "skip")
    _, _, result = run_training(config, progress=False)
    assert result.iterations == 5
    notes = [json.loads(line) for line in (tmp_path / "skip" / "log.jsonl").read_text().splitlines()]
    skipped = [r for r in notes if r["kind"] == "note" and "skipped a bad sample" in r["message"]]
    assert len(skipped) == 1 and "00003.png" in skipped[0]["message"]
