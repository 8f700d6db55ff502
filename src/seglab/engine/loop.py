"""The run loop shared by every training task: the run directory, checkpoints, exact resume, the NaN guard, logs,
the progress bar and DDP. A task (semantic segmentation `seglab.engine.trainer.Trainer`, Mask R-CNN
`seglab.engine.instance.InstanceTrainer`, BPR `seglab.engine.refine.BPRTrainer`) subclasses `RunLoop` and
gives only its data, its loss and its evaluation (see `RunLoop`).

Iterations: one iteration is one optimizer step over `optim.accumulate` micro-batches, each loss scaled by
1/accumulate; under torchrun DDP averages the gradients over the processes. The learning rate of every parameter
group is `lr_at(iteration, group's base rate, schedule)` before the step.

Determinism: the trainer state saves torch's, Python's and numpy's RNG states (and the task saves where its data
stream stands), so `resume` continues a run exactly where its last checkpoint left it; evaluation does not touch
the training random stream.

Reliability: a checkpoint is `iter_N.safetensors` (weights) + `iter_N.state.pt` (optimizer, scaler, RNG, EMA,
counters, the task's state), each written to a temporary file and renamed into place; `latest.json` is rewritten
(the same way) only after both are complete, so a process killed at any moment leaves `latest.json` naming a whole
checkpoint. `train.keep_checkpoints: N` keeps the newest N pairs (0 keeps all), removing older ones only after a new
one is complete. A non-finite loss stops training before anything is written (or skips the step, up to
`train.max_bad_losses` times); a full disk stops it with an error that says so, and the previous checkpoint stays
the latest. A resumed run moves the log records written after its checkpoint to `log.superseded.jsonl`.

Files in the work dir: `config.yaml`, `log.jsonl` (records `train`, `eval`, `note`, `skip`), `tensorboard/`,
`iter_N.*`, `latest.json`, `best.safetensors` (best value of the task's `best_metric`), `ema.safetensors`
(`train.ema`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import errno
import json
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from seglab.checkpoint import atomic_write, load_state_dict, save_model
from seglab.config import OptimConfig, RunConfig, ScheduleConfig
from seglab.engine.distributed import (
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    convert_sync_batchnorm,
    get_rank,
    get_world_size,
)
from seglab.engine.optim import build_optimizer, scheduled_lr
from seglab.registry import load_model_weights


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite (more often than `train.max_bad_losses` allows)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous checkpoint is intact."""


# ---------------------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """torch's, Python's, numpy's and the current CUDA device's RNG states, in a form `torch.load(weights_only=True)`
    reads back."""
    np_state = np.random.get_state()
    cuda = [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "python": json.dumps(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": np_state[2],
                  "has_gauss": np_state[3], "cached": np_state[4]},
        "cuda": cuda,  # the current device's generator only: other devices belong to other ranks
    }


def set_rng_state(state: dict) -> None:
    """Restores what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])


def torch_save(obj, path: str) -> None:
    """`torch.save` through a Python file object: a failed write raises OSError with its errno (a path gives a bare
    RuntimeError)."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) reports a full disk or an exhausted quota."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        # safetensors reports I/O errors as its own exception type with the OS message in the text
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text or "os error 28" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last call, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return peak
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def has_running_stats(module: nn.Module) -> bool:
    """Whether `module` is a normalisation layer that keeps running statistics (every BatchNorm, SyncBatchNorm,
    InstanceNorm with `track_running_stats`, or any layer with a `running_mean` / `running_var` tensor)."""
    return any(isinstance(getattr(module, name, None), torch.Tensor) for name in ("running_mean", "running_var"))


def set_train_mode(model: nn.Module, norm_eval: bool = False) -> None:
    """`model.train()`; with `norm_eval` (mmseg's), every normalisation layer with running statistics stays in eval
    mode: the statistics are frozen. Stateless norms (GroupNorm, LayerNorm, InstanceNorm without running stats)
    behave the same in both modes."""
    model.train()
    if norm_eval:
        for module in model.modules():
            if has_running_stats(module):
                module.eval()


def supersede_log_records(work_dir: Path, iteration: int) -> None:
    """Moves the log records written after `iteration` (and a line cut short by a kill) from work_dir/log.jsonl to
    log.superseded.jsonl: a resumed run writes them anew, and nothing is lost."""
    path = Path(work_dir) / "log.jsonl"
    if not path.is_file():
        return
    kept, dropped = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and record.get("iter", 0) <= iteration
        except json.JSONDecodeError:
            keep = False
        (kept if keep else dropped).append(line + "\n")
    if dropped:
        with open(path.parent / "log.superseded.jsonl", "a") as f:
            f.writelines(dropped)
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept)))


def resumed_run_is_complete(work_dir: Path, iteration: int, iters: int, report: bool = True) -> bool:
    """True (and says so when `report`) when a resumed checkpoint is already at `schedule.iters`; an error when it is
    beyond it."""
    if iteration > iters:
        raise ValueError(f"--resume: the checkpoint is at iteration {iteration}, beyond schedule.iters {iters}; "
                         f"nothing to train")
    if iteration == iters and report:
        print(f"[seglab] the run in {work_dir} is complete (iteration {iteration} of {iters}); nothing to train",
              flush=True)
    return iteration == iters


def keep_run_config(work_dir: Path, iteration: int, changes: list) -> str:
    """`--resume --override`: keeps the run's config.yaml as config.iter_N.yaml (before it is rewritten) and returns
    the note that lists the changes."""
    from seglab.config import format_differences

    saved = Path(work_dir) / "config.yaml"
    if saved.is_file():
        previous = saved.read_text()
        atomic_write(saved.parent / f"config.iter_{iteration}.yaml", lambda tmp: Path(tmp).write_text(previous))
    return (f"--override: continuing with the given config where it differs from the run's (the run's is kept as "
            f"config.iter_{iteration}.yaml): {format_differences(changes)}")


def load_matching_weights(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Loads the tensors of a checkpoint that fit `model` by name and shape (fine-tuning from another task).

    Args:
        model: the model to initialise.
        path: a seglab checkpoint, e.g. of another class count or another variant of the family.

    Returns:
        `loaded` keys, and the skipped ones: `mismatched` ("key: file shape vs model shape"), `missing` (in the
        model, not in the file; they keep their initialisation) and `unexpected` (in the file only).
    """
    state = load_state_dict(path)
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not loaded:
        raise ValueError(f"--init-from {path}: none of its {len(state)} tensors matches a tensor of the model by name "
                         f"and shape; is it a seglab checkpoint of this model family? (convert foreign files with "
                         f"`seglab convert`)")
    model.load_state_dict(loaded, strict=False)
    return {
        "loaded": list(loaded),
        "mismatched": [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                       for k in state if k in own and k not in loaded],
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
    }


def tensorboard_writer(work_dir: Path, purge_step: int | None = None):
    """A SummaryWriter on work_dir/tensorboard, or None without tensorboard; `purge_step` drops the events a killed
    run wrote after the checkpoint that is being resumed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but a missing one should not stop training
        return None
    return SummaryWriter(log_dir=str(Path(work_dir) / "tensorboard"), purge_step=purge_step)


def plain(value: Any) -> Any:
    """NaN and infinities as None (JSON null): the log stays standard JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class StreamBatchSampler:
    """Endless micro-batches of `(index, sample_seed)` for one rank, reproducible from any starting step.

    Micro-batch step `s` covers the global stream positions `[s * W * B, (s + 1) * W * B)` (W ranks, B samples per
    rank); rank r takes `[(s * W + r) * B, (s * W + r + 1) * B)`. A position `p` fixes the epoch (`p // n`), the
    shuffled index within it and the sample's augmentation seed. So the ranks' shares are disjoint, all ranks
    together draw every sample once per epoch, and one step's shares together are what a single process with
    batch W * B draws.

    Args:
        num_samples: dataset length n.
        batch_size: samples per micro-batch on this rank (B).
        seed: the run's seed.
        start_step: the first micro-batch step to yield (`iteration * accumulate` when resuming).
        rank: this process's rank.
        world_size: number of processes (W).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if num_samples < 1:
            raise ValueError("the training set is empty: nothing to sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self._epoch, self._perm = -1, None

    def _index(self, position: int) -> int:
        epoch = position // self.num_samples
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_samples, generator=generator).tolist()
        return self._perm[position % self.num_samples]

    def positions(self, step: int) -> range:
        """The global stream positions of this rank's micro-batch at `step`."""
        start = (step * self.world_size + self.rank) * self.batch_size
        return range(start, start + self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield [(self._index(p), self.seed * 1_000_003 + p) for p in self.positions(step)]
            step += 1


class ModelEma:
    """Exponential moving average of a model's weights, updated after every optimizer step.

    `ema = decay * ema + (1 - decay) * weights` for floating-point parameters and buffers (BatchNorm statistics
    too); integer buffers (BatchNorm's batch counter) are copied. The average lives in a frozen copy of the model
    in eval mode, which evaluation uses in place of the trained weights.

    Args:
        model: the trained model itself (not a DDP or compiled wrapper).
        decay: weight of the old average per step, in (0, 1), e.g. 0.9999.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema: the decay must lie strictly between 0 and 1 (e.g. 0.9999), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        # parameters and buffers keep their storage for the whole run (optimizers and BN update them in place)
        own, current = self.module.state_dict(), model.state_dict()
        self._floats = [(own[k], current[k]) for k in own if own[k].is_floating_point()]
        self._others = [(own[k], current[k]) for k in own if not own[k].is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        if self._floats:
            ema, current = zip(*self._floats, strict=True)
            torch._foreach_lerp_(list(ema), list(current), 1.0 - self.decay)
        for ema_value, value in self._others:
            ema_value.copy_(value)

    @torch.no_grad()
    def reset(self) -> None:
        """Restarts the average from the model's current weights (after loading other weights into it)."""
        for ema_value, value in self._floats + self._others:
            ema_value.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)


class TrainForward(nn.Module):
    """The training forward as a module, the call DDP and torch.compile wrap (DDP syncs via `forward`):
    `forward(*inputs)` is `model.<method>(*inputs)`, or `model(*inputs)` when `method` is None."""

    def __init__(self, model: nn.Module, method: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *inputs: Any) -> Any:
        if self.method is None:
            return self.model(*inputs)
        return getattr(self.model, self.method)(*inputs)


def stream_loader(dataset: Dataset, collate_fn: Callable, config: RunConfig, start_step: int, rank: int = 0,
                  world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over `dataset[(index, sample_seed)]` drawn by a `StreamBatchSampler` from `start_step` on (a
    micro-batch step; `iteration * accumulate` when resuming), with `data.num_workers` workers."""
    sampler = StreamBatchSampler(len(dataset), config.data.batch_size, config.train.seed, start_step=start_step,
                                 rank=rank, world_size=world_size)
    # the loader's own generator: creating its iterator would otherwise draw from the global RNG and make a
    # resumed run's dropout/drop-path stream differ from the uninterrupted one
    return DataLoader(dataset, batch_sampler=sampler, num_workers=config.data.num_workers, collate_fn=collate_fn,
                      persistent_workers=config.data.num_workers > 0, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(config.train.seed))


@dataclass
class StepResult:
    values: torch.Tensor  # (1 + number of loss parts,) means over micro-batches and ranks: loss, parts
    problem: str | None  # why the step was not taken (non-finite loss or gradient norm); None when it was
    data_time: float
    step_time: float


# ---------------------------------------------------------------------------------------------------- the loop
class RunLoop:
    """Trains `model` as `config` says (schedule, optimizer, `train.*` settings) in `config.train.work_dir`.

    A task subclasses it and gives:

    - its data: `batches()` (an endless iterator from `self.iteration` on; its position is saved by `task_state`
      unless it derives from the iteration) and `fetch(batches)` (the next micro-batch, on `self.device`);
    - its step: `forward(module, batch)` (the training forward through `module`, which wraps `train_method` of the
      model for DDP / torch.compile; under autocast) and `loss(outputs, batch) -> (loss, {name: part})`;
    - its evaluation: `evaluates`, `evaluate(model) -> metrics`, `eval_record(metrics)` (what the log keeps),
      `eval_report(metrics)` (what the console shows) and `best_metric` (kept as best.safetensors);
    - its checkpoints: `checkpoint_meta()` (metadata of every saved weights file), `save_weights(path, module,
      extra)`, `task_state()` / `load_task_state(state)` (its own entries of the trainer state), `config_text()`
      (config.yaml) and `lr_at(iteration, base_lr, schedule)`; `after_step(step)` sees each step's result and
      `result(metrics)` is what `train` returns.

    In a torchrun job (tasks with `distributed = True`) every rank builds the loop; the model is wrapped in
    DistributedDataParallel, evaluation runs on all ranks, and only rank 0 logs and writes files while the others
    wait for it at a barrier.

    Args:
        config: the resolved run config.
        model: the model to train (moved to `device`).
        device: where to train (in a torchrun job, this rank's device).
    """

    best_metric: str | None = None  # metric whose best value is saved as best.safetensors (higher is better)
    best_state_key = "best"  # its key in the trainer state
    train_method: str | None = None  # model method of the training forward (None: the model's own call)
    distributed = False  # whether the task shares its data out over torchrun processes
    class_names: list[str] | None = None  # names of the per-class metrics in TensorBoard

    def __init__(self, config: RunConfig, model: nn.Module, device: torch.device | str = "cpu") -> None:
        cfg = config
        if cfg.optim.accumulate < 1:
            raise ValueError(f"optim.accumulate: expected an integer >= 1, got {cfg.optim.accumulate}")
        if cfg.train.max_bad_losses < 0:
            raise ValueError(f"train.max_bad_losses: expected an integer >= 0, got {cfg.train.max_bad_losses}")
        if cfg.train.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"train.amp: expected none, bf16 or fp16, got {cfg.train.amp!r}")
        self.config = config
        self.device = torch.device(device)
        self.rank, self.world_size = get_rank(), get_world_size()
        if self.world_size > 1 and not self.distributed:
            from seglab.config import ConfigError

            raise ConfigError(f"{type(self).__name__} trains in one process; start it without torchrun")
        self.is_main = self.rank == 0
        self.notes: list[str] = []
        model = model.to(self.device)
        if cfg.train.sync_bn:
            model, note = convert_sync_batchnorm(model, self.device)
            if note:
                self.notes.append(note)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.work_dir = Path(cfg.train.work_dir)
        self.total_batch = self.world_size * cfg.data.batch_size * cfg.optim.accumulate
        self.optimizer = build_optimizer(model, self.optimizer_config())
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp == "fp16" and self.device.type == "cuda")
        self._ddp: DistributedDataParallel | None = None
        self.train_module: nn.Module = TrainForward(model, self.train_method)
        if self.world_size > 1:
            # the constructor broadcasts rank 0's weights, so every rank starts from the same model; gradients are
            # views into the all-reduce buckets (no second copy of every gradient)
            self._ddp = DistributedDataParallel(
                self.train_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True)
            self.train_module = self._ddp
        if cfg.train.compile:
            self.train_module = torch.compile(self.train_module)
        self.ema = ModelEma(model, cfg.train.ema) if cfg.train.ema is not None else None
        self.iteration = 0
        self.best: float | None = None
        self.bad_steps = 0
        self._part_names: list[str] | None = None
        self._last_eval_time = 0.0  # seconds; the ETA counts the evaluations still to come at this duration

    # ----------------------------------------------------------------------------------------- the task's part
    def optimizer_config(self) -> OptimConfig:
        """The optimizer settings (called once by the constructor; `self.total_batch` is known)."""
        return self.config.optim

    def batches(self) -> Iterator:
        """The endless training stream from `self.iteration` on."""
        raise NotImplementedError

    def fetch(self, batches: Iterator) -> Any:
        """The next micro-batch of `batches`, on `self.device`."""
        raise NotImplementedError

    def forward(self, module: nn.Module, batch: Any) -> Any:
        """The training forward of `batch` through `module` (run under autocast)."""
        raise NotImplementedError

    def loss(self, outputs: Any, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise and its named parts (logged)."""
        raise NotImplementedError

    @property
    def evaluates(self) -> bool:
        return False

    def evaluate(self, model: nn.Module) -> dict:
        """Metrics of `model` (in eval mode, under inference_mode; the EMA copy with `train.ema`)."""
        raise NotImplementedError

    def eval_record(self, metrics: dict) -> dict:
        """The entries of the `eval` log record."""
        return dict(metrics)

    def eval_report(self, metrics: dict) -> str | None:
        """What the console shows after an evaluation."""
        return None

    def checkpoint_meta(self) -> dict[str, str]:
        """Metadata of every weights file the run saves."""
        return {}

    def save_weights(self, path: Path, module: nn.Module, extra: dict[str, str]) -> None:
        save_model(path, module, extra=extra)

    def task_state(self) -> dict:
        """The task's own entries of the trainer state (tensors, numbers, strings: `weights_only` loading)."""
        return {}

    def load_task_state(self, state: dict) -> None:
        """Restores `task_state` from a resumed trainer state."""

    def config_text(self) -> str | None:
        """config.yaml of the run (None: none is written)."""
        from seglab.config import dump_config

        return dump_config(self.config)

    def lr_at(self, iteration: int, base_lr: float, schedule: ScheduleConfig) -> float:
        return scheduled_lr(iteration, base_lr, schedule)

    def after_step(self, step: StepResult) -> None:
        """Sees every step's result (`step.problem` None: taken) before the iteration counter moves on."""

    def result(self, metrics: dict | None) -> Any:
        """What `train` returns (`metrics`: the last evaluation's)."""
        return metrics

    # ----------------------------------------------------------------------------------------- checkpoints
    def _checkpoint_paths(self, iteration: int) -> tuple[Path, Path]:
        return self.work_dir / f"iter_{iteration}.safetensors", self.work_dir / f"iter_{iteration}.state.pt"

    def _read_latest(self) -> dict | None:
        path = self.work_dir / "latest.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); it names the checkpoint to resume from: delete it "
                             f"and write {{\"iteration\": N, \"weights\": \"iter_N.safetensors\", "
                             f"\"state\": \"iter_N.state.pt\"}} for the newest complete iter_N pair") from exc

    def _latest_sentence(self) -> str:
        """Says which checkpoint a failure left as the latest one."""
        latest = self._read_latest()
        if latest is None:
            return "No checkpoint had been written yet."
        return (f"The last good checkpoint, {self.work_dir / latest['weights']} (iteration {latest['iteration']}), "
                f"is untouched.")

    def _check_finite_weights(self) -> None:
        bad = [k for k, t in self.model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:
            raise NonFiniteLossError(
                f"weights or statistics became NaN or infinite by iteration {self.iteration} ({len(bad)} tensors, "
                f"e.g. {', '.join(bad[:3])}); not saving them. {self._latest_sentence()} Lower optim.lr or set "
                f"optim.grad_clip and continue with --resume")

    def _write_guarded(self, new_files: list[Path], write: Callable[[], None], what: str) -> None:
        """Runs `write()`; on failure removes the files of this save that latest.json does not name, and raises
        an error that says what happened (`what` was being saved) and that the previous checkpoint is intact."""
        try:
            write()
        except Exception as exc:
            latest = self._read_latest() or {}
            keep = {latest.get("weights"), latest.get("state")}
            for path in new_files:
                if path.name not in keep:
                    path.unlink(missing_ok=True)
            where = self.work_dir.resolve()
            if is_disk_full(exc):
                raise CheckpointWriteError(
                    errno.ENOSPC, f"disk full while saving {what} in {where}: "
                    f"{exc}. {self._latest_sentence()} Free space (or lower train.keep_checkpoints) and continue "
                    f"with --resume") from exc
            if isinstance(exc, OSError):
                raise CheckpointWriteError(
                    exc.errno, f"cannot save {what} in {where}: {exc}. "
                    f"{self._latest_sentence()}") from exc
            raise

    def save_checkpoint(self) -> None:
        """Writes `iter_N.safetensors`, `iter_N.state.pt` (and `ema.safetensors`), then points latest.json at them.

        Only rank 0 writes; the other ranks wait until it is done.
        """
        if self.is_main:
            self._check_finite_weights()
            weights, state_path = self._checkpoint_paths(self.iteration)
            extra = {"iteration": str(self.iteration), **self.checkpoint_meta()}

            def write() -> None:
                self.save_weights(weights, self.model, extra)
                if self.ema is not None:
                    self.save_weights(self.work_dir / "ema.safetensors", self.ema.module,
                                      {**extra, "ema_decay": str(self.ema.decay)})
                state = {"iteration": self.iteration, "optimizer": self.optimizer.state_dict(),
                         "scaler": self.scaler.state_dict(), "rng": rng_state(),
                         self.best_state_key: -1.0 if self.best is None else self.best,
                         "bad_steps": self.bad_steps, "world_size": self.world_size,
                         "total_batch": self.total_batch, "accumulate": self.config.optim.accumulate,
                         "schedule": dataclasses.asdict(self.config.schedule),
                         "base_lr": self.optimizer.param_groups[0]["initial_lr"], **self.task_state()}
                if self.ema is not None:
                    state["ema"] = self.ema.state_dict()
                atomic_write(state_path, lambda tmp: torch_save(state, tmp))
                # last: latest.json names a pair only once both files are complete
                latest = {"iteration": self.iteration, "weights": weights.name, "state": state_path.name}
                atomic_write(self.work_dir / "latest.json", lambda tmp: Path(tmp).write_text(json.dumps(latest)))

            self._write_guarded([weights, state_path], write, f"the checkpoint of iteration {self.iteration}")
            self._prune_checkpoints()
        barrier()

    def _prune_checkpoints(self) -> None:
        """Keeps the newest `train.keep_checkpoints` iter_N pairs (0: all)."""
        keep = self.config.train.keep_checkpoints
        if keep <= 0:
            return
        found = sorted((int(p.name[len("iter_"):-len(".safetensors")]), p)
                       for p in self.work_dir.glob("iter_*.safetensors")
                       if p.name[len("iter_"):-len(".safetensors")].isdigit())
        for iteration, path in found[:-keep]:
            path.unlink(missing_ok=True)
            self._checkpoint_paths(iteration)[1].unlink(missing_ok=True)

    def _remove_stray_temp_files(self) -> None:
        # what atomic_write leaves when a process is killed mid-write: `.NAME.XXXXXXXX.tmp`; never named by latest.json
        for path in self.work_dir.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def resume(self) -> float | None:
        """Restores model, optimizer, scaler, RNG, EMA, counters and the task's state from `work_dir/latest.json`;
        returns the learning rate the run's own schedule gives at the resumed iteration (None for older
        checkpoints)."""
        latest = self._read_latest()
        if latest is None:
            raise FileNotFoundError(f"--resume: no {self.work_dir / 'latest.json'}; nothing to resume in "
                                    f"{self.work_dir}")
        weights, state_path = self.work_dir / latest["weights"], self.work_dir / latest["state"]
        for path in (weights, state_path):
            if not path.is_file():
                raise FileNotFoundError(f"--resume: {self.work_dir / 'latest.json'} names {path.name}, which is "
                                        f"missing; point latest.json at a complete iter_N pair in {self.work_dir}")
        load_model_weights(self.model, weights)
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if len(state["optimizer"]["param_groups"]) != len(self.optimizer.param_groups):
            raise ValueError(f"--resume: {state_path.name} holds {len(state['optimizer']['param_groups'])} "
                             f"optimizer parameter group(s), this config builds {len(self.optimizer.param_groups)} "
                             f"(optim.paramwise or the parameters changed); resume with the run's settings")
        # loading restores the run's group settings; keep this config's base rates and decays (they equal the
        # run's unless --override changed optim.lr or optim.weight_decay)
        configured = [(g["initial_lr"], g["weight_decay"]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, (lr, decay) in zip(self.optimizer.param_groups, configured, strict=True):
            group["initial_lr"], group["weight_decay"] = lr, decay
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        best = state.get(self.best_state_key, -1.0)
        self.best = None if best < 0 else float(best)
        self.bad_steps = state.get("bad_steps", 0)
        self.load_task_state(state)
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema.reset()
                self.notes.append(f"train.ema: {state_path.name} holds no EMA weights (EMA was off); the average "
                                  f"starts from the weights of iteration {self.iteration}")
        saved_batch = state.get("total_batch")
        if saved_batch is not None and (saved_batch, state.get("world_size")) != (self.total_batch, self.world_size):
            self.notes.append(f"resuming a run written by {state.get('world_size')} process(es) with a total batch "
                              f"of {saved_batch} on {self.world_size} process(es) with a total batch of "
                              f"{self.total_batch}: the data order from here on differs from the original run's")
        if "schedule" not in state:
            return None
        saved = ScheduleConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in state["schedule"].items()})
        return self.lr_at(self.iteration, state["base_lr"], saved)

    def init_from(self, path: str | Path) -> dict[str, list[str]]:
        """Loads the tensors of `path` that fit the model (fine-tuning) and notes what was skipped."""
        report = load_matching_weights(self.model, path)
        if self.ema is not None:
            self.ema.reset()
        own = len(self.model.state_dict())
        lines = [f"--init-from {path}: loaded {len(report['loaded'])} of the model's {own} tensors"]
        if report["mismatched"]:
            lines.append(f"  skipped, other shape ({len(report['mismatched'])}): {'; '.join(report['mismatched'])}")
        if report["missing"]:
            lines.append(f"  not in the file, left initialised ({len(report['missing'])}): "
                         f"{', '.join(report['missing'])}")
        if report["unexpected"]:
            lines.append(f"  in the file only, ignored ({len(report['unexpected'])}): "
                         f"{', '.join(report['unexpected'])}")
        self.notes.append("\n".join(lines))
        return report

    # ----------------------------------------------------------------------------------------- logging
    def _log(self, record: dict, writer) -> None:
        if not self.is_main:
            return
        with open(self.work_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({k: plain(v) for k, v in record.items()}) + "\n")
        if writer is None:
            return
        for key, value in record.items():
            if key in ("kind", "iter"):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                writer.add_scalar(f"{record['kind']}/{key}", value, record["iter"])
            elif isinstance(value, list) and key in ("IoU", "Acc"):
                names = self.class_names if self.class_names and len(self.class_names) == len(value) else None
                for i, v in enumerate(value):
                    if v is not None and math.isfinite(v):
                        writer.add_scalar(f"{record['kind']}/{key}/{names[i] if names else i}", v, record["iter"])

    def _console(self, line: str) -> None:
        """A line on the console from rank 0, above the progress bar when there is one."""
        if self.is_main:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()

    def _note(self, message: str, writer=None) -> None:
        """A one-off message: printed and logged by rank 0."""
        if self.is_main:
            self._console(f"[seglab] {message}")
            self._log({"kind": "note", "iter": self.iteration, "message": message}, writer)

    def _train_line(self, record: dict) -> str:
        """`iter 220/6000  loss 0.5123  lr 2.48e-04  0.140 s/it  eta 0:13:18  mem 812 MB` (mem: peak RSS on CPU;
        eta: the remaining steps at this speed plus the remaining evaluations at the last one's duration)."""
        total, interval = self.config.schedule.iters, self.config.eval.interval
        # evaluations still to come (every `eval.interval` and at the end), at the last one's duration
        evaluations = total // interval - record["iter"] // interval + (total % interval != 0)
        eval_time = self._last_eval_time if self.evaluates else 0.0
        seconds = (total - record["iter"]) * record["sec_per_iter"] + evaluations * eval_time
        eta = datetime.timedelta(seconds=round(seconds))
        parts = [f"iter {record['iter']}/{total}", f"loss {record['loss']:.4f}"]
        parts += [f"{name} {record[name]:.4f}" for name in self._part_names or [] if name != "loss_main"]
        parts += [f"lr {record['lr']:.2e}", f"{record['sec_per_iter']:.3f} s/it", f"eta {eta}",
                  f"mem {record['peak_mem_mb']:.0f} MB"]
        return "  ".join(parts)

    def _train_record(self, window: list[StepResult], lr: float) -> dict:
        """Means over the logging window: loss and its parts, timings, throughput, peak memory."""
        values = torch.stack([s.values for s in window]).mean(0).tolist()
        names = ["loss", *(self._part_names or [])]
        data_time = sum(s.data_time for s in window) / len(window)
        step_time = sum(s.step_time for s in window) / len(window)
        sec_per_iter = data_time + step_time
        return {"kind": "train", "iter": self.iteration, **dict(zip(names, values, strict=True)), "lr": lr,
                "data_time": data_time, "step_time": step_time, "sec_per_iter": sec_per_iter,
                "images_per_s": self.total_batch / sec_per_iter if sec_per_iter > 0 else 0.0,
                "peak_mem_mb": peak_memory_mb(self.device)}

    # ----------------------------------------------------------------------------------------- training
    def _autocast(self):
        amp = self.config.train.amp
        if amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def _set_train_mode(self) -> None:
        set_train_mode(self.model, self.config.train.norm_eval)

    def _set_lr(self) -> float:
        """Sets every group's lr for the coming iteration; returns the first group's (for logging)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.iteration, group["initial_lr"], self.config.schedule)
        return self.optimizer.param_groups[0]["lr"]

    def _evaluate(self, writer) -> dict:
        rng = rng_state()  # evaluation must not change the training random stream
        # DDP leaves each rank with BN statistics updated by its own last batch: evaluate rank 0's everywhere
        broadcast_buffers(self.model)
        target = self.model
        if self.ema is not None:
            broadcast_buffers(self.ema.module)
            target = self.ema.module
        self.model.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            metrics = self.evaluate(target)
        eval_time = time.perf_counter() - start
        self._last_eval_time = eval_time
        self._set_train_mode()
        set_rng_state(rng)
        record = {"kind": "eval", "iter": self.iteration, **self.eval_record(metrics), "eval_time": eval_time}
        if self.ema is not None:
            record["weights"] = "ema"
        self._log(record, writer)
        score = metrics.get(self.best_metric) if self.best_metric else None
        if score is not None and math.isfinite(score) and (self.best is None or score > self.best):
            self.best = float(score)
            if self.is_main:
                path = self.work_dir / "best.safetensors"
                extra = {"iteration": str(self.iteration), self.best_metric: f"{score:.6f}",
                         **self.checkpoint_meta()}
                self._write_guarded([], lambda: self.save_weights(path, target, extra),
                                    f"{path.name} (iteration {self.iteration})")
            barrier()
        report = self.eval_report(metrics)
        if report:
            self._console(report)
        return metrics

    def _backward(self, loss: torch.Tensor) -> None:
        if self._ddp is None:
            loss.backward()
            return
        with warnings.catch_warnings():
            # CPU depthwise-conv kernels (C, 1, k, k) get gradients whose size-1 dimension has another stride than
            # DDP's bucket view; DDP copies them into the bucket, nothing is wrong
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            loss.backward()

    def _train_step(self, batches: Iterator) -> StepResult:
        """One optimizer step over `optim.accumulate` micro-batches."""
        cfg = self.config
        accumulate = cfg.optim.accumulate
        # a step that may be skipped must not leave its forward's traces either (BN statistics, maybe NaN)
        buffers = [b.clone() for b in self.model.buffers()] if cfg.train.max_bad_losses > 0 else None
        self.optimizer.zero_grad(set_to_none=True)
        total, problem, data_time, start = None, None, 0.0, time.perf_counter()
        for micro in range(accumulate):
            fetch = time.perf_counter()
            batch = self.fetch(batches)
            data_time += time.perf_counter() - fetch
            if problem is not None:
                continue  # the step is lost, but its micro-batches are still drawn: the stream stays aligned
            # gradients are averaged across ranks only on the last micro-batch
            last = micro == accumulate - 1
            with nullcontext() if self._ddp is None or last else self._ddp.no_sync():
                with self._autocast():
                    outputs = self.forward(self.train_module, batch)
                loss, parts = self.loss(outputs, batch)
                if self._part_names is None:
                    self._part_names = list(parts)
                # every rank gets the same values (NaN anywhere makes the sum NaN), so all take the same decision
                numbers = [loss.item(), *(v.item() if isinstance(v, torch.Tensor) else v for v in parts.values())]
                values = all_reduce_mean(torch.tensor(numbers, dtype=torch.float64))
                if not torch.isfinite(values).all():
                    problem = f"loss is {values[0].item()}" + (f" on micro-batch {micro + 1} of {accumulate}"
                                                                if accumulate > 1 else "")
                    total = values
                    continue
                self._backward(self.scaler.scale(loss / accumulate))
            total = values if total is None else total + values
        if problem is None:
            total = total / accumulate
            if cfg.optim.grad_clip:
                self.scaler.unscale_(self.optimizer)
                norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
                # with fp16 the scaler skips steps with inf/NaN gradients itself; in fp32/bf16 they are bad steps
                if not self.scaler.is_enabled() and not torch.isfinite(norm):
                    problem = f"gradient norm is {norm.item()} (loss {total[0].item():.4f})"
            if problem is None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.ema is not None:
                    self.ema.update()
        if problem is not None:
            self.optimizer.zero_grad(set_to_none=True)
            if buffers is not None:
                with torch.no_grad():
                    for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                        buffer.copy_(saved)
        return StepResult(total, problem, data_time, time.perf_counter() - start - data_time)

    def _handle_bad_step(self, step: StepResult, writer) -> None:
        """Counts a step whose loss or gradient was NaN/inf; raises once there are more than allowed."""
        self.bad_steps += 1
        what = f"{step.problem} at iteration {self.iteration + 1}"
        limit = self.config.train.max_bad_losses
        if self.bad_steps > limit:
            raise NonFiniteLossError(
                f"{what}; training stopped (bad steps: {self.bad_steps}, allowed: train.max_bad_losses={limit}). "
                f"{self._latest_sentence()} Lower optim.lr, set optim.grad_clip, check the data "
                f"(seglab data check), or skip such steps with --set train.max_bad_losses=N; then continue with "
                f"--resume")
        self._note(f"{what}: step skipped, weights and normalisation statistics unchanged ({self.bad_steps} of at "
                   f"most {limit} bad steps)", writer)
        self._log({"kind": "skip", "iter": self.iteration + 1, "bad_steps": self.bad_steps}, writer)

    def train(self, resume: bool = False, progress: bool = True, stop_at: int | None = None,
              resume_changes: list | None = None) -> Any:
        """Runs the schedule to `schedule.iters`, or pauses after iteration `stop_at` (with a checkpoint there),
        for jobs cut into time slices; `resume=True` continues from the latest checkpoint, and `resume_changes`
        ((key, run value, given value) from `seglab train --resume --override`) are printed and logged. Returns
        `self.result(last evaluation's metrics)`."""
        from tqdm import tqdm

        cfg = self.config
        if self.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._remove_stray_temp_files()
        barrier()
        if resume:
            saved_lr = self.resume()
            if resumed_run_is_complete(self.work_dir, self.iteration, cfg.schedule.iters, report=self.is_main):
                return self.result(None)
            self.notes.insert(0, f"resuming from iteration {self.iteration} of {cfg.schedule.iters}")
            if resume_changes:
                if self.is_main:  # rank 0 writes files and prints the notes
                    self.notes.insert(1, keep_run_config(self.work_dir, self.iteration, resume_changes))
                new_lr = self._set_lr()
                if saved_lr is not None and not math.isclose(new_lr, saved_lr, rel_tol=0.01, abs_tol=1e-12):
                    self.notes.insert(2, f"--override: the learning rate at iteration {self.iteration} is "
                                         f"{saved_lr:.3g} under the run's schedule and {new_lr:.3g} under the given "
                                         f"one (poly over the new length, at the same iteration)")
        else:
            if self.is_main:
                for stale in ("log.jsonl", "latest.json"):
                    (self.work_dir / stale).unlink(missing_ok=True)
            if cfg.train.init_from:
                self.init_from(cfg.train.init_from)
        writer = None
        if self.is_main:
            if resume:
                supersede_log_records(self.work_dir, self.iteration)
            text = self.config_text()
            if text is not None:
                atomic_write(self.work_dir / "config.yaml", lambda tmp: Path(tmp).write_text(text))
            writer = tensorboard_writer(self.work_dir, purge_step=self.iteration if resume else None)
        for note in self.notes:
            self._note(note, writer)
        self.notes = []
        batches = self.batches()
        # the bar only on a terminal: in a log file the text lines (every train.log_interval) say the same, and a
        # bar's carriage-return updates would run into them
        bar = tqdm(total=cfg.schedule.iters, initial=self.iteration,
                   disable=not (progress and self.is_main and sys.stderr.isatty()), dynamic_ncols=True, desc="train",
                   mininterval=0.5)
        self._set_train_mode()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        metrics = None
        window: list[StepResult] = []
        try:
            while self.iteration < cfg.schedule.iters:
                lr = self._set_lr()
                step = self._train_step(batches)
                self.after_step(step)
                if step.problem is not None:
                    self._handle_bad_step(step, writer)
                else:
                    window.append(step)
                self.iteration += 1
                bar.update(1)
                if step.problem is None:
                    bar.set_postfix(loss=f"{step.values[0].item():.4f}", lr=f"{lr:.2e}", refresh=False)
                last = self.iteration == cfg.schedule.iters
                if window and (self.iteration % cfg.train.log_interval == 0 or last):
                    record = self._train_record(window, lr)
                    self._log(record, writer)
                    self._console(self._train_line(record))
                    window = []
                if self.evaluates and (self.iteration % cfg.eval.interval == 0 or last):
                    metrics = self._evaluate(writer)
                if self.iteration % cfg.train.checkpoint_interval == 0 or last or self.iteration == stop_at:
                    self.save_checkpoint()
                if self.iteration == stop_at:
                    break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return self.result(metrics)
