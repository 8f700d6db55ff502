"""Training end to end on generated shapes: logs, checkpoints, exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from seglab.checkpoint import read_checkpoint_meta
from seglab.cli.main import run_training
from seglab.config import load_config
from seglab.data.synthetic import generate_shapes
from seglab.engine.run import build_model, build_split, evaluate
from seglab.engine.trainer import ModelEma, scale_lr


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
    # observability: loss parts, data time vs step time, throughput, peak memory (process RSS on CPU)
    for r in train:
        assert r["loss_main"] == pytest.approx(r["loss"])  # no auxiliary heads: the main loss is the loss
        assert r["data_time"] > 0 and r["step_time"] > 0
        assert r["sec_per_iter"] == pytest.approx(r["data_time"] + r["step_time"])
        assert r["images_per_s"] == pytest.approx(2 / r["sec_per_iter"])
        assert r["peak_mem_mb"] > 50
    assert [r["iter"] for r in evals] == [2, 4]
    assert 0.0 <= evals[-1]["mIoU"] <= 1.0
    assert len(evals[-1]["IoU"]) == len(evals[-1]["Acc"]) == 6 and evals[-1]["num_pixels"] == 4 * 48 * 48
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


def test_model_ema_update_rule():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.75)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(4.0)
    model(torch.randn(8, 2))  # BN statistics and batch counter move too
    ema.update()
    for key, value in model.state_dict().items():
        expected = value if not value.is_floating_point() else 0.75 * before[key] + 0.25 * value
        torch.testing.assert_close(ema.module.state_dict()[key], expected)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="train.ema"):
        ModelEma(model, decay=1.0)


def test_ema_is_saved_evaluated_and_resumed_exactly(shapes_root, tmp_path):
    def config(work):
        c = tiny_config(shapes_root, work)
        c.train.ema = 0.5
        return c

    run_training(config(tmp_path / "straight"), progress=False)
    run_training(config(tmp_path / "split"), progress=False, stop_at=3)
    run_training(config(tmp_path / "split"), resume=True, progress=False)
    straight = load_file(tmp_path / "straight" / "ema.safetensors")
    resumed = load_file(tmp_path / "split" / "ema.safetensors")
    weights, _ = final_weights(tmp_path / "straight")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert any(not torch.equal(straight[k], weights[k]) for k in weights if k.endswith("weight"))
    assert read_checkpoint_meta(tmp_path / "straight" / "ema.safetensors").extra["iteration"] == "6"
    # evaluation used the EMA weights
    records = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    assert last_eval["weights"] == "ema"
    c = config(tmp_path / "straight")
    model = build_model(c, 6, checkpoint=str(tmp_path / "straight" / "ema.safetensors"))
    assert evaluate(model, build_split(c, "val"), c, 6)["mIoU"] == last_eval["mIoU"]


def test_channels_last_and_compile_train_like_the_default(shapes_root, tmp_path, monkeypatch):
    compiled = []

    def spy_compile(module, **kwargs):  # the real torch.compile takes ~10 s to trace on 2 CPU cores
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", spy_compile)
    # SGD, not the default AdamW: Adam's first step is ~lr * sign(grad), which turns float noise on zero-gradient
    # parameters (conv biases before BatchNorm) into lr-sized differences between memory formats
    plain = tiny_config(shapes_root, tmp_path / "plain", iters=2)
    plain.optim.name = "sgd"
    run_training(plain, progress=False)
    fast = tiny_config(shapes_root, tmp_path / "fast", iters=2)
    fast.optim.name = "sgd"
    fast.train.channels_last = True
    fast.train.compile = True
    model, _, _ = run_training(fast, progress=False)
    assert len(compiled) == 1 and compiled[0].model is model  # the training forward is what gets compiled
    assert model.backbone.stages[0].patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)
    a, _ = final_weights(tmp_path / "plain")
    b, _ = final_weights(tmp_path / "fast")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_linear_lr_scaling(shapes_root, tmp_path, capsys):
    assert scale_lr(6e-5, batch_size=8, reference_batch=16) == pytest.approx(3e-5)
    with pytest.raises(ValueError, match="batch sizes must be >= 1"):
        scale_lr(1e-3, batch_size=0, reference_batch=16)
    config = tiny_config(shapes_root, tmp_path / "scaled", iters=1)
    config.optim.reference_batch = 8  # lr 1e-3 was tuned for a total batch of 8; this run's is 2 x accumulate 2
    config.optim.accumulate = 2
    config.schedule.warmup_iters = 0
    run_training(config, progress=False)
    assert "lr = 0.0005" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "scaled" / "log.jsonl").read_text().splitlines()]
    (train,) = [r for r in records if r["kind"] == "train"]
    assert train["lr"] == pytest.approx(5e-4)


def test_every_run_draws_its_curves_and_confusion_matrix(shapes_root, tmp_path):
    from PIL import Image

    work = tmp_path / "plots"
    run_training(tiny_config(shapes_root, work, iters=2), progress=False)
    assert Image.open(work / "training_curve.png").size[0] > 100
    assert Image.open(work / "confusion_matrix.png").size[0] > 100
