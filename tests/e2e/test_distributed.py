"""Multi-process training and evaluation: torchrun with 2 gloo processes on CPU against one process.

One `torchrun --nproc-per-node 2 -m seglab.cli train` run (batch 2 per process, distributed evaluation at the end)
is compared with one in-process run at batch 4 and with a single-process evaluation of its checkpoint; gradient
accumulation (2 x batch 2) is compared with the same batch-4 run.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from seglab.cli.main import run_training
from seglab.config import load_config
from seglab.data.synthetic import generate_shapes
from seglab.engine import distributed
from seglab.engine.distributed import convert_sync_batchnorm, shard_range
from seglab.engine.run import build_model, build_split, evaluate
from seglab.engine.trainer import StreamBatchSampler, seed_everything

ITERS = 3


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes"), n_train=12, n_val=5, size=48, seed=3)


@pytest.fixture(scope="module")
def config_path(shapes_root, tmp_path_factory):
    # No dropout or drop path (random masks would differ between 2 x B and 1 x 2B), BatchNorm statistics frozen
    # (per-process batch statistics would differ; SyncBatchNorm needs CUDA), and crops that never need padding, so
    # every micro-batch has the same number of labelled pixels. SGD: its step is linear in the gradient.
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(f"""
model: {{name: segformer_b0, overrides: {{drop_path_rate: 0.0, head_dropout: 0.0}}}}
data:
  dataset: shapes
  root: {shapes_root}
  batch_size: 2
  val_batch_size: 1
  train_transform: {{crop_size: [32, 32], scale: [48, 48], ratio_range: [1.0, 1.0]}}
optim: {{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0001}}
schedule: {{iters: {ITERS}, warmup_iters: 0}}
eval: {{interval: {ITERS}}}
train: {{checkpoint_interval: {ITERS}, log_interval: 1, sync_bn: true, norm_eval: true, threads: 1}}
""")
    return path


def _weights(work_dir):
    latest = json.loads((work_dir / "latest.json").read_text())
    return load_file(work_dir / latest["weights"]), work_dir / latest["weights"]


def _records(work_dir, kind):
    lines = (work_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.fixture(scope="module")
def two_process_run(config_path, tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "seglab.cli", "train", str(config_path), "--work-dir", str(work), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout


@pytest.fixture(scope="module")
def one_process_batch4(config_path, tmp_path_factory):
    work = tmp_path_factory.mktemp("single")
    config = load_config(config_path, ["data.batch_size=4", f"train.work_dir={work}"])
    run_training(config, progress=False)
    return work


def test_stream_sampler_deals_each_rank_a_disjoint_share_of_every_global_batch():
    n, batch = 12, 2
    single = iter(StreamBatchSampler(n, 2 * batch, seed=7))
    ranks = [iter(StreamBatchSampler(n, batch, seed=7, rank=r, world_size=2)) for r in range(2)]
    seen = []
    for _ in range(n // (2 * batch)):  # one epoch
        shares = [next(r) for r in ranks]
        assert shares[0] + shares[1] == next(single)  # same samples and augmentation seeds, rank 0 first
        assert not {i for i, _ in shares[0]} & {i for i, _ in shares[1]}
        seen += [i for share in shares for i, _ in share]
    assert sorted(seen) == list(range(n))  # every sample exactly once per epoch
    # resuming at a step continues the same stream
    resumed = iter(StreamBatchSampler(n, batch, seed=7, start_step=2, rank=1, world_size=2))
    fresh = iter(StreamBatchSampler(n, batch, seed=7, rank=1, world_size=2))
    for _ in range(2):
        next(fresh)
    assert next(resumed) == next(fresh)


def test_shard_range_covers_every_item_once_without_padding():
    for n in (0, 1, 5, 8):
        for world in (1, 2, 3):
            shards = [shard_range(n, r, world) for r in range(world)]
            items = [i for start, stop in shards for i in range(start, stop)]
            assert items == list(range(n))
            sizes = [stop - start for start, stop in shards]
            assert max(sizes) - min(sizes) <= 1


def test_evaluation_splits_the_set_across_ranks(config_path, monkeypatch):
    config = load_config(config_path)
    val_set = build_split(config, "val")
    model = build_model(config, 6).eval()
    whole = evaluate(model, val_set, config, 6)
    paths, pixels = [], 0
    for rank in range(2):  # each rank's share, without a process group (all_reduce is then a no-op)
        monkeypatch.setattr(distributed, "get_world_size", lambda: 2)
        monkeypatch.setattr(distributed, "get_rank", lambda r=rank: r)
        part = evaluate(model, val_set, config, 6, on_batch=lambda s, _: paths.extend(x["path"] for x in s))
        pixels += part["num_pixels"]
    assert sorted(paths) == sorted(str(s["path"]) for s in val_set) and len(paths) == len(val_set) == 5
    assert pixels == whole["num_pixels"]


def test_sync_bn_falls_back_to_batch_norm_in_a_single_process():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    converted, note = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], nn.BatchNorm2d) and not isinstance(converted[1], nn.SyncBatchNorm)
    assert "single process" in note
    converted(torch.randn(2, 3, 4, 4))  # trains as plain BatchNorm, no "process group" error


def test_two_processes_evaluate_exactly_like_one(two_process_run, config_path):
    work, stdout = two_process_run
    assert "mIoU" in stdout and stdout.count("checkpoints and logs in") == 1  # rank 0 prints, rank 1 does not
    (record,) = _records(work, "eval")
    _, checkpoint = _weights(work)
    config = load_config(config_path)
    model = build_model(config, 6, checkpoint=str(checkpoint))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: same kernels, same floating-point results
    try:
        single = evaluate(model, build_split(config, "val"), config, 6)
    finally:
        torch.set_num_threads(threads)
    # every pixel of the 5 images counted once: no sample evaluated twice, no padding duplicates
    assert record["num_pixels"] == single["num_pixels"] == 5 * 48 * 48
    assert record["aAcc"] == single["aAcc"] and record["mIoU"] == single["mIoU"]
    assert record["IoU"] == [None if v != v else v for v in single["IoU"]]


def test_two_processes_of_batch_2_train_like_one_of_batch_4(two_process_run, one_process_batch4):
    work, _ = two_process_run
    assert [r["iter"] for r in _records(work, "train")] == list(range(1, ITERS + 1))  # logged once, by rank 0
    assert sorted(p.name for p in work.glob("iter_*")) == [f"iter_{ITERS}.safetensors", f"iter_{ITERS}.state.pt"]
    ddp, _ = _weights(work)
    single, _ = _weights(one_process_batch4)
    seed_everything(0)  # the initial weights of both runs
    initial = build_model(load_config(None, ["model.overrides={drop_path_rate: 0.0, head_dropout: 0.0}"]), 6)
    moved = 0
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-5, atol=1e-6, msg=key)
        moved += not torch.equal(value, initial.state_dict()[key])
    assert moved > 50  # training did change the weights
    ddp_loss = [r["loss"] for r in _records(work, "train")]
    single_loss = [r["loss"] for r in _records(one_process_batch4, "train")]
    assert ddp_loss == pytest.approx(single_loss, rel=1e-5)  # logged loss: mean over both ranks


def test_gradient_accumulation_matches_the_larger_batch(config_path, one_process_batch4, tmp_path):
    work = tmp_path / "accumulate"
    config = load_config(config_path, ["data.batch_size=2", "optim.accumulate=2", f"train.work_dir={work}"])
    _, _, result = run_training(config, progress=False)
    assert result.iterations == ITERS  # an iteration is one optimizer step
    accumulated, _ = _weights(work)
    single, _ = _weights(one_process_batch4)
    for key, value in single.items():
        torch.testing.assert_close(accumulated[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert all(r["images_per_s"] > 0 for r in _records(work, "train"))
