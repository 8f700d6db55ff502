"""Training end to end on generated shapes: logs, checkpoints, exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from seglab.cli.main import run_training
from seglab.config import load_config
from seglab.data.synthetic import generate_shapes


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes"), n_train=12, n_val=4, size=48, seed=3)


def tiny_config(root, work_dir, iters=6):
    return load_config(None, [
        "model.name=segformer_b0", "data.dataset=shapes", f"data.root={root}", "data.batch_size=2",
        "data.val_batch_size=4", "data.train_transform.crop_size=[32, 32]", "data.train_transform.scale=[48, 48]",
        "optim.lr=1.0e-3", "optim.paramwise={norm: {decay_mult: 0.0}, head: {lr_mult: 10.0}}",
        f"schedule.iters={iters}", "schedule.warmup_iters=2", "eval.interval=2", "train.checkpoint_interval=4",
        "train.log_interval=1", "train.keep_checkpoints=5", f"train.work_dir={work_dir}",
    ])


def final_weights(work_dir):
    latest = json.loads((work_dir / "latest.json").read_text())
    return load_file(work_dir / latest["weights"]), latest["iteration"]


def test_resume_gives_identical_weights(shapes_root, tmp_path):
    run_training(tiny_config(shapes_root, tmp_path / "straight"), progress=False)
    run_training(tiny_config(shapes_root, tmp_path / "split"), progress=False, stop_at=3)
    paused, iteration = final_weights(tmp_path / "split")
    assert iteration == 3
    run_training(tiny_config(shapes_root, tmp_path / "split"), resume=True, progress=False)

    straight, n1 = final_weights(tmp_path / "straight")
    resumed, n2 = final_weights(tmp_path / "split")
    assert n1 == n2 == 6
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # and training did change the weights after the pause
    assert any(not torch.equal(paused[k], resumed[k]) for k in paused if k.endswith("weight"))


def test_run_writes_logs_checkpoints_and_config(shapes_root, tmp_path):
    work = tmp_path / "run"
    _, _, result = run_training(tiny_config(shapes_root, work, iters=4), progress=False)
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["iter"] for r in train] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and r["lr"] > 0 for r in train)
    assert [r["iter"] for r in evals] == [2, 4]
    assert 0.0 <= evals[-1]["mIoU"] <= 1.0
    assert result.best_miou == max(r["mIoU"] for r in evals)
    assert (work / "best.safetensors").is_file()
    assert (work / "iter_4.safetensors").is_file() and (work / "iter_4.state.pt").is_file()
    assert any((work / "tensorboard").iterdir())
    # the resolved config is saved and loads back to the same values
    assert load_config(work / "config.yaml") == tiny_config(shapes_root, work, iters=4)
    # no temporary files are left behind by the atomic writes
    assert not list(work.glob("*.tmp"))


def test_resume_without_checkpoint_is_a_clear_error(shapes_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_training(tiny_config(shapes_root, tmp_path / "empty"), resume=True, progress=False)


def test_bf16_autocast_and_gradient_clipping_train(shapes_root, tmp_path):
    config = tiny_config(shapes_root, tmp_path / "amp", iters=2)
    config.train.amp = "bf16"
    config.optim.grad_clip = 0.5
    model, _, result = run_training(config, progress=False)
    assert result.iterations == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = [json.loads(line) for line in (tmp_path / "amp" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] > 0 for r in records if r["kind"] == "train")
    config.train.amp = "fp8"
    with pytest.raises(ValueError, match="train.amp: expected none, bf16 or fp16"):
        run_training(config, progress=False)
