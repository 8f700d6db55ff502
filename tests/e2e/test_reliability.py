"""Training that loses nothing: NaN losses, kill -9 at random moments, a full disk, fine-tuning from another task."""

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
from safetensors.torch import load_file

import seglab
import seglab.checkpoint as checkpoint_module
import seglab.engine.trainer as trainer_module
from seglab.checkpoint import save_model
from seglab.cli.main import main, run_training
from seglab.config import load_config
from seglab.data.synthetic import generate_shapes
from seglab.engine.trainer import CheckpointWriteError, NonFiniteLossError


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


def latest(work_dir):
    return json.loads((work_dir / "latest.json").read_text())


def latest_weights(work_dir):
    return load_file(work_dir / latest(work_dir)["weights"])


def nan_at_calls(monkeypatch, calls):
    """Makes the loss of the given (1-based) training steps NaN."""
    real = trainer_module.segmentation_loss
    count = [0]

    def loss_fn(*args, **kwargs):
        count[0] += 1
        loss, parts = real(*args, **kwargs)
        if count[0] in calls:
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(trainer_module, "segmentation_loss", loss_fn)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(config_path, tmp_path, monkeypatch, capsys):
    work = tmp_path / "nan"
    nan_at_calls(monkeypatch, {5})
    assert main(["train", str(config_path), "--work-dir", str(work), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "loss is nan at iteration 5" in err and "iter_4.safetensors" in err and "max_bad_losses" in err
    assert latest(work)["iteration"] == 4  # nothing was written after the bad step
    assert not (work / "iter_6.safetensors").exists()
    weights = latest_weights(work)
    assert all(torch.isfinite(v).all() for v in weights.values())
    seglab.create_model("segformer_b0", checkpoint=str(work / "iter_4.safetensors"))  # loads


def test_bad_steps_can_be_skipped_up_to_a_bound(config_path, tmp_path, monkeypatch):
    nan_at_calls(monkeypatch, {2, 3})
    config = load_config(config_path, [f"train.work_dir={tmp_path / 'skip'}", "train.max_bad_losses=2"])
    _, _, result = run_training(config, progress=False)
    assert result.iterations == 6 and result.bad_steps == 2
    records = [json.loads(line) for line in (tmp_path / "skip" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "skip"] == [2, 3]
    assert [r["iter"] for r in records if r["kind"] == "train"] == [1, 4, 5, 6]
    # the skipped steps left the weights alone: iteration 2's checkpoint equals a run stopped after iteration 1
    config = load_config(config_path, [f"train.work_dir={tmp_path / 'one'}"])
    run_training(config, progress=False, stop_at=1)
    one = latest_weights(tmp_path / "one")
    skipped = load_file(tmp_path / "skip" / "iter_2.safetensors")
    assert all(torch.equal(one[k], skipped[k]) for k in one)

    nan_at_calls(monkeypatch, {1, 2, 3})  # one more than allowed
    config = load_config(config_path, [f"train.work_dir={tmp_path / 'over'}", "train.max_bad_losses=2"])
    with pytest.raises(NonFiniteLossError, match="bad steps: 3, allowed: train.max_bad_losses=2"):
        run_training(config, progress=False)


@pytest.mark.parametrize("fail", ["weights", "state"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(config_path, tmp_path, monkeypatch, fail):
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
    config = load_config(config_path, [f"train.work_dir={work}"])
    with pytest.raises(CheckpointWriteError, match="disk full while saving the checkpoint of iteration 4") as info:
        run_training(config, progress=False)
    assert info.value.errno == errno.ENOSPC
    assert "iter_2.safetensors (iteration 2), is untouched" in str(info.value)
    assert latest(work)["iteration"] == 2
    # the new checkpoint's files and temporaries are gone (they only took space); iteration 2's are whole
    assert sorted(p.name for p in work.iterdir() if p.name.startswith((".", "iter_"))) == [
        "iter_2.safetensors", "iter_2.state.pt"]
    seglab.create_model("segformer_b0", checkpoint=str(work / "iter_2.safetensors"))

    monkeypatch.undo()  # space freed: the run continues from iteration 2
    _, _, result = run_training(load_config(config_path, [f"train.work_dir={work}"]), resume=True, progress=False)
    assert result.iterations == 6 and latest(work)["iteration"] == 6


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


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(config_path, tmp_path):
    overrides = ["--set", "schedule.iters=8", "--set", "train.checkpoint_interval=1", "--set",
                 "train.keep_checkpoints=2"]
    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # train.threads of the subprocesses: the same kernels, bit-identical results
    try:
        config = load_config(config_path, [o for o in overrides if o != "--set"] + [f"train.work_dir={reference}"])
        run_training(config, progress=False)
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
        cmd = [sys.executable, "-m", "seglab.cli", "train", str(config_path), "--work-dir", str(work),
               "--no-progress", *overrides, *(["--resume"] if start else [])]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["kind"] == "train"] == list(range(1, 9))
    resumed, expected = latest_weights(work), latest_weights(reference)
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key


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
