"""Training BPR's refinement network on the shared run loop: the official schedule, the patch batches, `train_bpr`.
Patch sets, checkpoints and evaluation are `seglab.instance.bpr_dataset`.

The schedule is the official one (chenhang98/BPR `configs/bpr/hrnet18s_128.py`, whose `_base_` is mmseg 0.x's
`schedules/schedule_160k.py`): SGD with lr 0.01, momentum 0.9, weight decay 5e-4, poly decay with power 0.9 down to
min_lr 1e-4, no warm-up, 160k iterations at 8 patches per GPU on 4 GPUs (32 per step). What seglab scales down
is only the length (`iters`) and the batch (`batch_size`); the poly curve is stretched over `iters`. lr is not
rescaled with the batch (the official rate, 0.01, is kept as the default). The official network starts from
ImageNet-pretrained HRNet weights (`open-mmlab://msra/hrnetv2_w18_small`); seglab has no such weights for BPR, so
`train_bpr` starts from random initialisation unless `init` names a checkpoint.

The run itself is the shared run loop's (`seglab.engine.loop.RunLoop`; `BPRTrainer` gives it the patch batches and
the loss): with a `work_dir`, atomic `iter_N` checkpoints, `log.jsonl` and TensorBoard, the NaN guard, the disk-full
guard and an exact `resume=True` after a kill.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from seglab.checkpoint import atomic_write, save_weights
from seglab.config import OptimConfig, RunConfig, ScheduleConfig, TrainConfig
from seglab.engine.loop import RunLoop, StepResult
from seglab.instance.bpr import (
    NMS_IOU_DATASET,
    PATCH_SIZE,
    BPRNet,
    PatchDataset,
    PatchSet,
    bpr_loss,
    build_bpr,
)
from seglab.instance.bpr_dataset import (
    WEIGHTS_NAME,
    InstanceDict,
    bpr_meta,
    build_patch_set,
    load_bpr,
    save_bpr,
)

# official schedule (mmseg 0.x schedule_160k + BPR data config); see the module docstring
BPR_LR = 0.01
BPR_MOMENTUM = 0.9
BPR_WEIGHT_DECAY = 5e-4
BPR_POLY_POWER = 0.9
BPR_MIN_LR = 1e-4
BPR_OFFICIAL_ITERS = 160_000
BPR_OFFICIAL_BATCH = 32  # 8 patches per GPU x 4 GPUs


def poly_lr(iteration: int, iters: int, base_lr: float, power: float = BPR_POLY_POWER,
            min_lr: float = BPR_MIN_LR) -> float:
    """mmcv's poly policy: `(base - min) * (1 - it / iters) ** power + min`."""
    progress = min(iteration, iters) / max(iters, 1)
    return (base_lr - min_lr) * (1.0 - progress) ** power + min_lr


class PatchBatches:
    """Endless batches `(images, masks, targets)` of `dataset`: a fresh permutation each epoch, the incomplete tail
    dropped (every step sees a full batch; with fewer samples than `batch_size` each step takes all of them). The
    permutations and the dataset's flips draw from the one `generator`; `state_dict` resumes the stream exactly."""

    def __init__(self, dataset: PatchDataset, batch_size: int, generator: torch.Generator) -> None:
        self.dataset = dataset
        self.n = len(dataset)
        self.size = min(batch_size, self.n)
        self.generator = generator
        self.order: torch.Tensor | None = None
        self.start = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.order is None or self.start > self.n - self.size:
            self.order, self.start = torch.randperm(self.n, generator=self.generator), 0
        indices = self.order[self.start:self.start + self.size]
        self.start += self.size
        samples = [self.dataset[int(k)] for k in indices]
        return tuple(torch.stack(parts) for parts in zip(*samples, strict=True))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "start": self.start,
                "order": torch.empty(0, dtype=torch.long) if self.order is None else self.order}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.start = int(state["start"])
        self.order = state["order"] if len(state["order"]) else None


class BPRTrainer(RunLoop):
    """BPR's task for the run loop: batches of boundary patches (`PatchBatches`), 2-class cross-entropy (`bpr_loss`);
    no evaluation. `losses` holds the loss of every step taken (saved with the checkpoints: complete after a
    resume); console lines and notes go to `log` (none when it is None).

    Args:
        config: the loop's settings (`train_bpr` builds them: optim, schedule, data.batch_size, train.*).
        model: the refinement network.
        patches: the training patch set.
        variant: `BPR_VARIANTS` key (checkpoint metadata).
        flip: random horizontal flips.
        settings: the run's settings, written as config.yaml and checked on resume.
        log: called with each console line.
        device: where to train.
    """

    def __init__(self, config: RunConfig, model: BPRNet, patches: PatchSet, variant: str, flip: bool,
                 settings: dict[str, Any], log: Callable[[str], None] | None = None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(config, model, device)
        generator = torch.Generator().manual_seed(config.train.seed)
        dataset = PatchDataset(patches, model.input_size, flip=flip, generator=generator)
        self.patch_batches = PatchBatches(dataset, config.data.batch_size, generator)
        self.variant = variant
        self.settings = settings
        self.log = log
        self.losses: list[float] = []

    def batches(self) -> Iterator:
        return self.patch_batches

    def fetch(self, batches: Iterator) -> tuple[torch.Tensor, ...]:
        return tuple(t.to(self.device) for t in next(batches))

    def forward(self, module: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        images, masks, _ = batch
        return module(images, masks)

    def loss(self, outputs: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, dict]:
        return bpr_loss(outputs, batch[2]), {}

    def after_step(self, step: StepResult) -> None:
        if step.problem is None:
            self.losses.append(step.values[0].item())

    def checkpoint_meta(self) -> dict[str, str]:
        return bpr_meta(self.model)

    def save_weights(self, path: Path, module: nn.Module, extra: dict[str, str]) -> None:
        save_weights(path, module.state_dict(), self.variant, 2, extra=extra)

    def task_state(self) -> dict:
        return {"patch_batches": self.patch_batches.state_dict(), "patches": self.patch_batches.n,
                "losses": torch.tensor(self.losses, dtype=torch.float64)}

    def load_task_state(self, state: dict) -> None:
        if state["patches"] != self.patch_batches.n:
            raise ValueError(f"resume: the run in {self.work_dir} trained on {state['patches']} patches, these "
                             f"images and masks give {self.patch_batches.n}; resume with the run's data")
        self.patch_batches.load_state_dict(state["patch_batches"])
        self.losses = state["losses"].tolist()

    def config_text(self) -> str:
        return yaml.safe_dump(self.settings, sort_keys=False)

    def _console(self, line: str) -> None:
        if self.log is not None:
            self.log(line)


def _bpr_config(settings: dict[str, Any], work_dir: Path, log_every: int, checkpoint_interval: int | None,
                keep_checkpoints: int, max_bad_losses: int) -> RunConfig:
    """The run loop's settings for a BPR run: SGD, poly without warm-up (`poly_lr`), no evaluation."""
    s = settings
    config = RunConfig()
    config.model.name = s["variant"]
    config.data.batch_size = min(s["batch_size"], s["patches"])
    config.optim = OptimConfig(name="sgd", lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    config.schedule = ScheduleConfig(iters=s["iters"], warmup_iters=0, power=s["power"], min_lr=s["min_lr"])
    config.eval.interval = s["iters"]
    config.train = TrainConfig(seed=s["seed"], log_interval=log_every, checkpoint_interval=checkpoint_interval or s["iters"],
                               keep_checkpoints=keep_checkpoints, work_dir=str(work_dir), max_bad_losses=max_bad_losses)
    return config


def train_bpr(
    images: Sequence[torch.Tensor | np.ndarray],
    coarse_masks: Sequence[InstanceDict],
    gt: Sequence[InstanceDict],
    *,
    variant: str = "bpr_hrnet18s",
    iters: int = 1000,
    batch_size: int = 8,
    lr: float = BPR_LR,
    momentum: float = BPR_MOMENTUM,
    weight_decay: float = BPR_WEIGHT_DECAY,
    power: float = BPR_POLY_POWER,
    min_lr: float = BPR_MIN_LR,
    patch_size: int = PATCH_SIZE,
    nms_iou: float = NMS_IOU_DATASET,
    input_size: int | None = None,
    flip: bool = True,
    init: str | Path | None = None,
    work_dir: str | Path | None = None,
    seed: int = 0,
    losses: list[float] | None = None,
    log: Callable[[str], None] | None = None,
    log_every: int = 50,
    resume: bool = False,
    stop_at: int | None = None,
    checkpoint_interval: int | None = None,
    keep_checkpoints: int = 1,
    max_bad_losses: int = 0,
    progress: bool = False,
    device: torch.device | str = "cpu",
) -> BPRNet:
    """Trains a BPR refinement network on boundary patches of coarse masks and returns it (in eval mode).

    Args:
        images: training images, RGB 0-255 (3, H, W) tensors or (H, W, 3) uint8 arrays.
        coarse_masks: per image, the instance model's predictions: `masks` (N, H, W) and `labels` (N,).
        gt: per image, ground truth: `masks`, `labels`, optional `iscrowd`.
        variant: `BPR_VARIANTS` key.
        iters: optimisation steps (official: 160,000).
        batch_size: patches per step (official: 32).
        lr, momentum, weight_decay, power, min_lr: SGD and poly schedule (official defaults).
        patch_size: patch side in image pixels (official 64; smaller for tiny images).
        nms_iou: proposal NMS when building the patch set (official 0.25).
        input_size: network input side; default the variant's (128 / 256).
        flip: random horizontal flips (official `RandomFlip`, p = 0.5).
        init: optional BPR checkpoint to start from (`load_bpr`).
        work_dir: the run directory (`seglab.engine.loop`: checkpoints, log.jsonl, config.yaml); at the end the
            weights are written there as `bpr.safetensors` with `train_log.json`. None: a temporary directory,
            removed at the end.
        seed: seeds initialisation, shuffling and flips.
        losses: if given, receives the loss of every step.
        log: called with the progress lines (every `log_every` steps) and notes.
        resume: continue the run in `work_dir` from its latest checkpoint (the same data and settings), exactly.
        stop_at: pause after this step (with a checkpoint there; the returned network is the paused one, and no
            `bpr.safetensors` is written); continue with `resume=True`.
        checkpoint_interval: steps between checkpoints (default: only at the end).
        keep_checkpoints: the newest checkpoints kept (0: all).
        max_bad_losses: steps with a NaN/inf loss to skip before stopping with `NonFiniteLossError`.
        progress: a progress bar on a terminal.
        device: where to train.
    """
    if iters < 1 or batch_size < 1:
        raise ValueError(f"iters and batch_size must be >= 1, got {iters} and {batch_size}")
    if (resume or stop_at is not None) and work_dir is None:
        raise ValueError("resume and stop_at need a work_dir (the run to continue)")
    torch.manual_seed(seed)
    model = load_bpr(init, variant) if init is not None else build_bpr(variant)
    if input_size is not None:
        model.input_size = input_size
    patches = build_patch_set(images, coarse_masks, gt, patch_size, nms_iou)
    n = patches.images.shape[0]
    if n == 0:
        raise ValueError("no training patches: no coarse instance has IoU > 0.5 with a same-class GT instance, or "
                         f"the images are not larger than patch_size {patch_size}")
    settings = {"variant": variant, "iters": iters, "batch_size": batch_size, "lr": lr, "momentum": momentum,
                "weight_decay": weight_decay, "power": power, "min_lr": min_lr, "patch_size": patch_size,
                "nms_iou": nms_iou, "input_size": model.input_size, "flip": flip, "seed": seed, "patches": n}
    with nullcontext(work_dir) if work_dir is not None else tempfile.TemporaryDirectory(prefix="bpr_") as run_dir:
        run_dir = Path(run_dir)
        if resume:
            _check_resumed_settings(run_dir, settings)
        config = _bpr_config(settings, run_dir, log_every, checkpoint_interval, keep_checkpoints, max_bad_losses)
        trainer = BPRTrainer(config, model, patches, variant, flip, settings, log=log, device=device)
        if n < batch_size:
            trainer.notes.append(f"{n} training patches, fewer than batch_size {batch_size}: every step takes all")
        trainer.train(resume=resume, progress=progress, stop_at=stop_at)
    history = trainer.losses
    if losses is not None:
        losses.extend(history)
    model = trainer.model.eval()
    if work_dir is not None and trainer.iteration == iters:
        work_dir = Path(work_dir)
        save_bpr(work_dir / WEIGHTS_NAME, model, variant)
        summary = {**settings, "losses": history}
        atomic_write(work_dir / "train_log.json", lambda tmp: Path(tmp).write_text(json.dumps(summary)))
    return model


def _check_resumed_settings(work_dir: Path, settings: dict[str, Any]) -> None:
    """A resumed BPR run must use the run's own settings (its config.yaml)."""
    path = work_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"resume: {path} not found; {work_dir} holds no BPR run to continue")
    saved = yaml.safe_load(path.read_text()) or {}
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
    if changed:
        raise ValueError(f"resume: the settings differ from the run's own ({path}): {'; '.join(changed)}; resume "
                         f"with the run's settings")


# ------------------------------------------------------------------------------------------------ checkpoints
