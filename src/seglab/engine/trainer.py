"""Semantic segmentation training: the task `Trainer` gives the run loop (`seglab.engine.loop.RunLoop`: work dir,
atomic checkpoints, exact resume, NaN guard, logs, DDP) its data, loss and evaluation.

Batches: one iteration is one optimizer step over a total batch of `world_size x data.batch_size x optim.accumulate`
samples. Each of the `world_size` processes runs `optim.accumulate` micro-batches of `data.batch_size`, each loss
scaled by 1/accumulate, and DDP averages the gradients over the processes. The sample stream is dealt out so
that a step sees exactly the samples that one process with batch `world_size x batch_size x accumulate` would,
so changing the number of processes or the accumulation keeps the data order. The loss of each micro-batch is
its own mean over labelled pixels (mmseg's per-GPU mean): a step equals the single large-batch step when the
micro-batches have equally many labelled pixels, and differs slightly when padding or ignored pixels make them
uneven.

Determinism: the sample order of every epoch and the random augmentation of every sample derive from
`(train.seed, position in the sample stream)` only (`StreamBatchSampler`), and the trainer state saves the RNG
states, so `--resume` continues a run exactly where its last checkpoint left it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from seglab.config import OptimConfig, RunConfig, test_pipeline
from seglab.engine.loop import (  # noqa: F401  (re-exported: the names callers import from here)
    CheckpointWriteError,
    ModelEma,
    NonFiniteLossError,
    RunLoop,
    StreamBatchSampler,
    keep_run_config,
    load_matching_weights,
    plain,
    resumed_run_is_complete,
    seed_everything,
    stream_loader,
    supersede_log_records,
)
from seglab.losses import segmentation_loss


def scale_lr(lr: float, batch_size: int, reference_batch: int) -> float:
    """The linear scaling rule (Goyal et al., arXiv:1706.02677): `lr * batch_size / reference_batch`.

    A recipe's learning rate was tuned for its total batch (e.g. SegFormer: 8 GPUs x 2 images = 16); training
    with another total batch (`world_size x data.batch_size x optim.accumulate`) scales it proportionally.
    `optim.reference_batch: 16` in a run config applies this at start-up.

    Args:
        lr: the learning rate tuned for `reference_batch`.
        batch_size: the total batch of one optimizer step in this run.
        reference_batch: the total batch `lr` was tuned for.
    """
    if batch_size < 1 or reference_batch < 1:
        raise ValueError(f"scale_lr: batch sizes must be >= 1, got batch_size={batch_size}, "
                         f"reference_batch={reference_batch}")
    return lr * batch_size / reference_batch


class SeededTransformDataset(Dataset):
    """Applies a random transform with a generator seeded per sample: `dataset[(index, seed)]`.

    Returns `(image, mask, skipped)`. With `skip_bad`, a sample that fails to load (`DatasetError`: undecodable
    file, wrong size, labels out of range) is replaced by the next index in order, deterministically, and its
    error message is returned in `skipped` for the trainer to count and log; otherwise the error propagates.
    """

    def __init__(self, dataset: Dataset, transform, skip_bad: bool = False) -> None:
        self.dataset = dataset
        self.transform = transform
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        from seglab.data.datasets import DatasetError

        index, seed = key
        skipped: list[str] = []
        for attempt in range(len(self.dataset)):
            try:
                sample = self.dataset[(index + attempt) % len(self.dataset)]
            except DatasetError as exc:
                if not self.skip_bad:
                    raise
                skipped.append(str(exc))
                continue
            generator = torch.Generator().manual_seed(seed)
            image, mask = self.transform(sample["image"], sample["mask"], generator=generator)
            return image, mask, skipped
        raise DatasetError(f"no sample of the {len(self.dataset)} in the training set could be read; first error: "
                           f"{skipped[0]}")


@dataclass
class TrainResult:
    iterations: int
    final_metrics: dict | None
    best_miou: float | None
    work_dir: Path
    bad_steps: int = 0


class Trainer(RunLoop):
    """Trains `model` on `train_set` as `config` says; evaluates with `evaluate_fn(model) -> metrics`.

    In a torchrun job (see `seglab.engine.distributed`) every rank builds a `Trainer`: each rank draws its share
    of every total batch, and the `evaluate_fn` splits the evaluation data and sums the confusion matrices.

    Args:
        config: the resolved run config.
        model: a model from `create_model` (knows its name, for checkpoints).
        train_set: a dataset of `{"image", "mask"}` samples.
        train_transform: `transform(image, mask, generator=...) -> (image, mask)`.
        evaluate_fn: called with the model (or its EMA copy) in eval mode; returns a metrics dict with "mIoU".
        device: where to train (in a torchrun job, this rank's device).
    """

    best_metric = "mIoU"
    best_state_key = "best_miou"
    train_method = "forward_train"  # (logits, aux logits), or the raw outputs of a model with its own training_loss
    distributed = True

    def __init__(self, config: RunConfig, model: nn.Module, train_set: Dataset, train_transform, evaluate_fn,
                 device: torch.device | str = "cpu") -> None:
        if config.data.on_bad_sample not in ("error", "skip"):
            raise ValueError(f"data.on_bad_sample: expected error or skip, got {config.data.on_bad_sample!r}")
        super().__init__(config, model, device)
        self.train_set = SeededTransformDataset(train_set, train_transform,
                                                skip_bad=config.data.on_bad_sample == "skip")
        self.skipped_samples = 0
        self.class_names = list(getattr(train_set, "classes", None) or []) or None
        palette = getattr(train_set, "palette", None)
        # class names and colours travel in every saved model's metadata (seglab predict draws with them)
        self.class_meta = {"classes": json.dumps(self.class_names)} if self.class_names else {}
        if self.class_names and palette is not None and len(palette) == len(self.class_names):
            self.class_meta["palette"] = json.dumps([[int(v) for v in c] for c in palette])
        # and how to feed it (normalisation, test resize, whole / slide): save_pretrained's config.json reads it
        self.class_meta["pipeline"] = json.dumps(test_pipeline(config))
        self.evaluate_fn = evaluate_fn
        weights = config.loss.class_weights
        self.class_weights = torch.tensor(weights, dtype=torch.float32, device=self.device) if weights else None

    @property
    def best_miou(self) -> float | None:
        return self.best

    def optimizer_config(self) -> OptimConfig:
        cfg = self.config
        if not cfg.optim.reference_batch:
            return cfg.optim
        lr = scale_lr(cfg.optim.lr, self.total_batch, cfg.optim.reference_batch)
        self.notes.append(f"optim.reference_batch: lr {cfg.optim.lr:g} was set for a total batch of "
                          f"{cfg.optim.reference_batch}; this run's total batch is {self.total_batch} "
                          f"({self.world_size} process(es) x {cfg.data.batch_size} x accumulate "
                          f"{cfg.optim.accumulate}), so lr = {lr:g}")
        return dataclasses.replace(cfg.optim, lr=lr)

    # ----------------------------------------------------------------------------------------- data
    def batches(self) -> Iterator:
        return iter(stream_loader(self.train_set, _stack_pairs, self.config,
                                  start_step=self.iteration * self.config.optim.accumulate, rank=self.rank,
                                  world_size=self.world_size, pin_memory=self.device.type == "cuda"))

    def fetch(self, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks, skipped = next(batches)
        for message in skipped:
            self.skipped_samples += 1
            self._note(f"skipped a bad sample ({self.skipped_samples} so far; data.on_bad_sample=skip): {message}")
        images = images.to(self.device, non_blocking=True)
        if self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks.to(self.device, non_blocking=True)

    # ----------------------------------------------------------------------------------------- step
    def forward(self, module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        return module(batch[0])

    def loss(self, outputs: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        cfg, masks = self.config, batch[1]
        # a model predicting (class, mask) pairs brings its own loss: `training_loss(outputs, labels, ignore_index)`
        own_loss = getattr(self.model, "training_loss", None)
        if own_loss is not None:  # mask classification (SegViT, MaskFormer): the model's set loss
            return own_loss(outputs, masks, cfg.data.ignore_index)
        logits, aux_logits = outputs
        return segmentation_loss(logits.float(), [a.float() for a in aux_logits], masks, self.class_weights,
                                 cfg.loss.aux_weights, cfg.data.ignore_index, self.model.align_corners)

    # ----------------------------------------------------------------------------------------- evaluation
    @property
    def evaluates(self) -> bool:
        return self.evaluate_fn is not None

    def evaluate(self, model: nn.Module) -> dict:
        return self.evaluate_fn(model)

    def eval_record(self, metrics: dict) -> dict:
        # NaN (class absent) as null: the log stays standard JSON
        record = {**{k: float(metrics[k]) for k in ("mIoU", "mAcc", "aAcc") if k in metrics},
                  **{k: [plain(float(v)) for v in metrics[k]] for k in ("IoU", "Acc") if k in metrics}}
        if "num_pixels" in metrics:
            record["num_pixels"] = int(metrics["num_pixels"])
        return record

    def eval_report(self, metrics: dict) -> str | None:
        miou = metrics.get("mIoU")
        if miou is None or "IoU" not in metrics:
            return None
        from seglab.metrics import format_table

        names = self.class_names if self.class_names and len(self.class_names) == len(metrics["IoU"]) else None
        best = "n/a" if self.best is None else f"{self.best:.4f}"
        return (f"evaluation at iteration {self.iteration} ({self._last_eval_time:.1f} s):\n"
                f"{format_table(metrics, names)}\n"
                f"iter {self.iteration}: mIoU {miou:.4f} (best {best})")

    # ----------------------------------------------------------------------------------------- checkpoints
    def checkpoint_meta(self) -> dict[str, str]:
        return self.class_meta

    def task_state(self) -> dict:
        return {"skipped_samples": self.skipped_samples}

    def load_task_state(self, state: dict) -> None:
        self.skipped_samples = state.get("skipped_samples", 0)

    def result(self, metrics: dict | None) -> TrainResult:
        return TrainResult(self.iteration, metrics, self.best, self.work_dir, self.bad_steps)


def _stack_pairs(
    batch: list[tuple[torch.Tensor, torch.Tensor, list[str]]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, masks, skipped = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(masks), [message for messages in skipped for message in messages]
