"""Iteration-based training with evaluation, logging, atomic checkpoints and exact resume.

Determinism: the sample order of every epoch and the random augmentation of every sample derive from
`(train.seed, position in the sample stream)` only, and the trainer state saves torch's, Python's and numpy's
RNG states, so `--resume` continues a run exactly where its last checkpoint left it.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seglab.config import RunConfig, dump_config
from seglab.engine.checkpoint import atomic_write, load_model_weights, save_model
from seglab.engine.optim import build_optimizer, set_lr
from seglab.losses import segmentation_loss


class SeededTransformDataset(Dataset):
    """Applies a random transform with a generator seeded per sample: `dataset[(index, seed)]`."""

    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        sample = self.dataset[index]
        generator = torch.Generator().manual_seed(seed)
        return self.transform(sample["image"], sample["mask"], generator=generator)


class StreamBatchSampler:
    """Endless batches of `(index, sample_seed)`, reproducible from any starting iteration.

    The stream position `p = iteration * batch_size + k` fixes the epoch (`p // n`), the shuffled index within it
    and the sample's augmentation seed.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start_iter: int = 0) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_iter = start_iter
        self._epoch, self._perm = -1, None

    def _index(self, position: int) -> int:
        epoch = position // self.num_samples
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_samples, generator=generator).tolist()
        return self._perm[position % self.num_samples]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start_iter
        while True:
            start = iteration * self.batch_size
            yield [(self._index(p), self.seed * 1_000_003 + p) for p in range(start, start + self.batch_size)]
            iteration += 1


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": json.dumps(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": np_state[2],
                  "has_gauss": np_state[3], "cached": np_state[4]},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    iterations: int
    final_metrics: dict | None
    best_miou: float | None
    work_dir: Path


class Trainer:
    """Trains `model` on `train_set` as `config` says; evaluates with `evaluate_fn(model) -> metrics`.

    Args:
        config: the resolved run config.
        model: a model from `create_model` (knows its name, for checkpoints).
        train_set: a dataset of `{"image", "mask"}` samples.
        train_transform: `transform(image, mask, generator=...) -> (image, mask)`.
        evaluate_fn: called with the model in eval mode; returns a metrics dict with "mIoU".
        device: where to train.
    """

    def __init__(self, config: RunConfig, model: nn.Module, train_set: Dataset, train_transform, evaluate_fn,
                 device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_set = SeededTransformDataset(train_set, train_transform)
        self.evaluate_fn = evaluate_fn
        self.work_dir = Path(config.train.work_dir)
        self.optimizer = build_optimizer(model, config.optim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.train.amp == "fp16" and self.device.type == "cuda")
        self.iteration = 0
        self.best_miou: float | None = None
        weights = config.loss.class_weights
        self.class_weights = torch.tensor(weights, dtype=torch.float32, device=self.device) if weights else None

    # ----------------------------------------------------------------------------------------- checkpoints
    def _checkpoint_paths(self, iteration: int) -> tuple[Path, Path]:
        return self.work_dir / f"iter_{iteration}.safetensors", self.work_dir / f"iter_{iteration}.state.pt"

    def save_checkpoint(self) -> None:
        weights, state_path = self._checkpoint_paths(self.iteration)
        save_model(weights, self.model, extra={"iteration": str(self.iteration)})
        state = {"iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": _rng_state(),
                 "best_miou": -1.0 if self.best_miou is None else self.best_miou}
        atomic_write(state_path, lambda tmp: torch.save(state, tmp))
        latest = {"iteration": self.iteration, "weights": weights.name, "state": state_path.name}
        atomic_write(self.work_dir / "latest.json", lambda tmp: Path(tmp).write_text(json.dumps(latest)))
        self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        keep = self.config.train.keep_checkpoints
        found = sorted((int(p.name[5:-12]), p) for p in self.work_dir.glob("iter_*.safetensors"))
        for iteration, path in found[:-keep] if keep > 0 else []:
            path.unlink(missing_ok=True)
            self._checkpoint_paths(iteration)[1].unlink(missing_ok=True)

    def resume(self) -> None:
        """Restores model, optimizer, scaler, RNG and iteration from `work_dir/latest.json`."""
        latest_path = self.work_dir / "latest.json"
        if not latest_path.is_file():
            raise FileNotFoundError(f"--resume: no {latest_path}; nothing to resume in {self.work_dir}")
        latest = json.loads(latest_path.read_text())
        load_model_weights(self.model, self.work_dir / latest["weights"])
        state = torch.load(self.work_dir / latest["state"], map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.iteration = state["iteration"]
        self.best_miou = None if state["best_miou"] < 0 else state["best_miou"]

    # ----------------------------------------------------------------------------------------- training
    def _autocast(self):
        amp = self.config.train.amp
        if amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        if amp not in ("bf16", "fp16"):
            raise ValueError(f"train.amp: expected none, bf16 or fp16, got {amp!r}")
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _log(self, record: dict, writer) -> None:
        with open(self.work_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            for key, value in record.items():
                if key not in ("kind", "iter") and isinstance(value, int | float) and math.isfinite(value):
                    writer.add_scalar(f"{record['kind']}/{key}", value, record["iter"])

    def _evaluate(self, writer, progress) -> dict:
        rng = _rng_state()  # evaluation must not change the training random stream
        self.model.eval()
        with torch.inference_mode():
            metrics = self.evaluate_fn(self.model)
        self.model.train()
        _set_rng_state(rng)
        record = {"kind": "eval", "iter": self.iteration,
                  **{k: float(metrics[k]) for k in ("mIoU", "mAcc", "aAcc") if k in metrics}}
        self._log(record, writer)
        miou = metrics.get("mIoU")
        if miou is not None and (self.best_miou is None or miou > self.best_miou):
            self.best_miou = float(miou)
            save_model(self.work_dir / "best.safetensors", self.model,
                       extra={"iteration": str(self.iteration), "mIoU": f"{miou:.6f}"})
        if progress is not None:
            progress.write(f"iter {self.iteration}: mIoU {miou:.4f} (best {self.best_miou:.4f})")
        return metrics

    def train(self, resume: bool = False, progress: bool = True, stop_at: int | None = None) -> TrainResult:
        """Runs the schedule to `schedule.iters`, or pauses after iteration `stop_at` (with a checkpoint there),
        for jobs cut into time slices; `resume=True` continues from the latest checkpoint."""
        from tqdm import tqdm

        cfg = self.config
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        else:
            for stale in ("log.jsonl", "latest.json"):
                (self.work_dir / stale).unlink(missing_ok=True)
        atomic_write(self.work_dir / "config.yaml", lambda tmp: Path(tmp).write_text(dump_config(cfg)))
        sampler = StreamBatchSampler(len(self.train_set), cfg.data.batch_size, cfg.train.seed, self.iteration)
        # the loader's own generator: creating its iterator would otherwise draw from the global RNG and make a
        # resumed run's dropout/drop-path stream differ from the uninterrupted one
        loader = DataLoader(self.train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                            collate_fn=_stack_pairs, persistent_workers=cfg.data.num_workers > 0,
                            generator=torch.Generator().manual_seed(cfg.train.seed))
        writer = _tensorboard_writer(self.work_dir)
        # redraw twice a second on a terminal, every 30 s into a log file
        bar = tqdm(total=cfg.schedule.iters, initial=self.iteration, disable=not progress, dynamic_ncols=True,
                   desc="train", mininterval=0.5 if sys.stderr.isatty() else 30.0)
        self.model.train()
        metrics = None
        align_corners = bool(getattr(getattr(self.model, "decode_head", None), "align_corners", False))
        window_loss, window_start = [], time.perf_counter()
        batches = iter(loader)
        while self.iteration < cfg.schedule.iters:
            images, masks = next(batches)
            images, masks = images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
            lr = set_lr(self.optimizer, self.iteration, cfg.schedule)
            with self._autocast():
                logits, aux_logits = self.model.forward_train(images)
            loss, parts = segmentation_loss(logits.float(), [a.float() for a in aux_logits], masks,
                                            self.class_weights, cfg.loss.aux_weights, cfg.data.ignore_index,
                                            align_corners)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {self.iteration}; lower optim.lr "
                                         f"or enable optim.grad_clip")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.iteration += 1
            window_loss.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
            if self.iteration % cfg.train.log_interval == 0 or self.iteration == cfg.schedule.iters:
                elapsed = time.perf_counter() - window_start
                self._log({"kind": "train", "iter": self.iteration, "loss": float(np.mean(window_loss)), "lr": lr,
                           "sec_per_iter": elapsed / len(window_loss), **parts}, writer)
                window_loss, window_start = [], time.perf_counter()
            last = self.iteration == cfg.schedule.iters
            if self.evaluate_fn is not None and (self.iteration % cfg.eval.interval == 0 or last):
                metrics = self._evaluate(writer, bar if progress else None)
            if self.iteration % cfg.train.checkpoint_interval == 0 or last or self.iteration == stop_at:
                self.save_checkpoint()
            if self.iteration == stop_at:
                break
        bar.close()
        if writer is not None:
            writer.close()
        return TrainResult(self.iteration, metrics, self.best_miou, self.work_dir)


def _stack_pairs(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(masks)


def _tensorboard_writer(work_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a missing one should not stop training
        return None
    return SummaryWriter(log_dir=str(work_dir / "tensorboard"))
