"""Instance segmentation runs: a run config whose `data.dataset` is an instance dataset trains a Mask R-CNN.

Recognised by `data.dataset`:

- `coco_instances`: a COCO instances JSON and an image folder per split, `data.options.ann_file` and
  `data.options.img_dir`, both relative to `data.root` with `{split}` replaced by the split name (defaults
  `annotations/instances_{split}.json` and `images/{split}`).
- `shapes_instances`: the synthetic instance shapes (`generate_shapes_instances`), written to `data.root` with the
  `data.generate` settings when missing or written with other settings; the same layout.

The model is `model.name` from `MASK_RCNN_VARIANTS` with `model.overrides` as `MaskRCNNOptions`; `model.num_classes`
defaults to the dataset's (categories + background). Images reach the model as floats in [0, 1]: torchvision's
transform resizes (`min_size`, `max_size`) and normalises them, so `data.mean` / `data.std` and the semantic
`data.train_transform` are not used, except `train_transform.flip_prob` (random horizontal flip).

Training follows the semantic trainer's conventions (`seglab.engine.trainer`): iteration-based, the optimizer of
`optim` (`build_optimizer`), linear warm-up then poly (`schedule.policy: poly`) or step decay (`policy: step`,
x `gamma` at each of `steps`), the sample order and flips derived from `(train.seed, position in the sample stream)`,
`work_dir/log.jsonl` records (`train`, `eval`, `note`), atomic `iter_N.safetensors` + `iter_N.state.pt` pairs named
by `latest.json` (written last), and `--resume` continuing exactly (the RNG states are saved: RPN / RoI sampling and
multi-scale sizes draw from torch's global generator). The loss is the sum of torchvision's loss dict; each part is
logged. Evaluation (`evaluate_instances`: segm, bbox and boundary AP) runs every `eval.interval` iterations and at
the end; the best `segm_AP` is saved as `best.safetensors`. One process only (no torchrun).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seglab.checkpoint import atomic_write, read_checkpoint_meta, save_model
from seglab.config import ConfigError, RunConfig, ScheduleConfig, dump_config
from seglab.data.coco_instances import CocoInstances, collate_instances, generate_shapes_instances, hflip_instances
from seglab.engine.optim import build_optimizer, scheduled_lr
from seglab.engine.trainer import (
    NonFiniteLossError,
    StreamBatchSampler,
    _peak_memory_mb,
    _rng_state,
    _set_rng_state,
    _torch_save,
    keep_run_config,
    load_matching_weights,
    resumed_run_is_complete,
    seed_everything,
    supersede_log_records,
)
from seglab.instance.mask_rcnn import MASK_RCNN_VARIANTS, build_mask_rcnn, evaluate_instances
from seglab.registry import load_model_weights

INSTANCE_DATASETS = ("coco_instances", "shapes_instances")
_DEFAULT_PATHS = {"ann_file": "annotations/instances_{split}.json", "img_dir": "images/{split}"}
_GENERATE_DEFAULTS = {"n_train": 200, "n_val": 50, "size": 128, "seed": 0}


def is_instance_config(config: RunConfig) -> bool:
    """Whether `config` describes an instance segmentation run (its `data.dataset` is an instance dataset)."""
    return config.data.dataset in INSTANCE_DATASETS


# ---------------------------------------------------------------------------------------------------- data
def split_paths(config: RunConfig, split: str) -> tuple[Path, Path]:
    """(annotation JSON, image folder) of `split`."""
    unknown = sorted(set(config.data.options) - set(_DEFAULT_PATHS))
    if unknown:
        raise ConfigError(f"data.options: unknown key(s) {unknown} for {config.data.dataset}; valid: "
                          f"{', '.join(_DEFAULT_PATHS)}")
    paths = {**_DEFAULT_PATHS, **config.data.options}
    root = Path(config.data.root)
    return root / paths["ann_file"].format(split=split), root / paths["img_dir"].format(split=split)


def prepare_instance_data(config: RunConfig) -> None:
    """Writes the synthetic instance set (`shapes_instances`) when missing or written with other settings."""
    if config.data.dataset != "shapes_instances":
        return
    gen = {**_GENERATE_DEFAULTS, **config.data.generate}
    unknown = set(gen) - set(_GENERATE_DEFAULTS)
    if unknown:
        raise ConfigError(f"data.generate: unknown key(s) {sorted(unknown)}; valid: {', '.join(_GENERATE_DEFAULTS)}")
    root = Path(config.data.root)
    marker = root / "annotations" / "instances_train.json"
    if marker.is_file() and (root / "annotations" / "instances_val.json").is_file():
        info = json.loads(marker.read_text()).get("info", {})
        size = [gen["size"]] * 2 if isinstance(gen["size"], int) else list(gen["size"])
        if (info.get("seed"), info.get("size"), info.get("n_train"), info.get("n_val")) == (
                gen["seed"], size, gen["n_train"], gen["n_val"]):
            return
    generate_shapes_instances(root, gen["n_train"], gen["n_val"], gen["size"], gen["seed"])


def build_instance_split(config: RunConfig, split: str, train: bool = False) -> CocoInstances:
    """The `CocoInstances` of `split`; for training, images without annotations are left out."""
    ann_file, img_dir = split_paths(config, split)
    return CocoInstances(ann_file, img_dir, skip_empty=train)


class _SeededFlips(Dataset):
    """`dataset[(index, seed)]`: the sample, flipped left-right with probability `p` drawn from `seed` alone."""

    def __init__(self, dataset: CocoInstances, p: float) -> None:
        self.dataset = dataset
        self.p = p

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        image, target = self.dataset[index]
        if self.p > 0 and float(torch.rand((), generator=torch.Generator().manual_seed(seed))) < self.p:
            image, target = hflip_instances(image, target)
        return image, target


# ---------------------------------------------------------------------------------------------------- model
def build_instance_model(config: RunConfig, num_classes: int | None, checkpoint: str | Path | None = None) -> nn.Module:
    """The configured Mask R-CNN; `checkpoint` (or `model.checkpoint`) loads whole-model weights strictly."""
    name = config.model.name
    if name not in MASK_RCNN_VARIANTS:
        raise ConfigError(f"model.name: {name!r} is not an instance model; with data.dataset "
                          f"{config.data.dataset!r} choose one of {', '.join(MASK_RCNN_VARIANTS)}")
    classes = config.model.num_classes or num_classes
    if classes is None:
        raise ConfigError("model.num_classes is needed (classes including the background)")
    model = build_mask_rcnn(name, classes, **config.model.overrides)
    checkpoint = checkpoint or config.model.checkpoint
    if checkpoint:
        load_model_weights(model, checkpoint)
    return model


def load_instance_checkpoint(path: str | Path) -> nn.Module:
    """A Mask R-CNN rebuilt from a seglab checkpoint's metadata (name, classes, options) with its weights."""
    meta = read_checkpoint_meta(path)
    if meta.model not in MASK_RCNN_VARIANTS:
        raise ValueError(f"{path} holds {meta.model!r}, not a Mask R-CNN ({', '.join(MASK_RCNN_VARIANTS)})")
    model = build_mask_rcnn(meta.model, meta.num_classes or 91, **meta.overrides)
    load_model_weights(model, path)
    return model


def is_instance_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a seglab checkpoint of a Mask R-CNN (False for other or unreadable files)."""
    try:
        return read_checkpoint_meta(path).model in MASK_RCNN_VARIANTS
    except (ValueError, FileNotFoundError):
        return False


# ---------------------------------------------------------------------------------------------------- schedule
def instance_lr(iteration: int, base_lr: float, schedule: ScheduleConfig) -> float:
    """Learning rate at `iteration`: `scheduled_lr`'s warm-up + poly, or warm-up + step decay (`policy: step`)."""
    if schedule.policy == "poly":
        return scheduled_lr(iteration, base_lr, schedule)
    if schedule.policy != "step":
        raise ConfigError(f"schedule.policy: expected poly or step, got {schedule.policy!r}")
    lr = base_lr * schedule.gamma ** sum(iteration >= s for s in schedule.steps)
    if iteration < schedule.warmup_iters:  # mmcv's linear warm-up, as in scheduled_lr
        lr *= 1.0 - (1.0 - iteration / schedule.warmup_iters) * (1.0 - schedule.warmup_ratio)
    return lr


# ---------------------------------------------------------------------------------------------------- training
@dataclasses.dataclass
class InstanceTrainResult:
    iterations: int
    final_metrics: dict[str, float] | None
    best_ap: float | None
    work_dir: Path


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


class InstanceTrainer:
    """Trains a torchvision Mask R-CNN on a `CocoInstances` training set as `config` says (see the module doc)."""

    def __init__(self, config: RunConfig, model: nn.Module, train_set: CocoInstances, val_set: CocoInstances | None,
                 device: torch.device | str = "cpu") -> None:
        if config.optim.accumulate < 1:
            raise ConfigError(f"optim.accumulate: expected an integer >= 1, got {config.optim.accumulate}")
        instance_lr(0, 1.0, config.schedule)  # rejects an unknown policy before any work
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_set = _SeededFlips(train_set, config.data.train_transform.flip_prob)
        self.val_set = val_set
        self.work_dir = Path(config.train.work_dir)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.iteration = 0
        self.best_ap: float | None = None

    # ----------------------------------------------------------------------------------------- files
    def _log(self, record: dict) -> None:
        with open(self.work_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")

    def _note(self, message: str) -> None:
        print(f"[seglab] {message}", flush=True)
        self._log({"kind": "note", "iter": self.iteration, "message": message})

    def save_checkpoint(self) -> None:
        bad = [k for k, t in self.model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:
            raise NonFiniteLossError(f"weights became NaN or infinite by iteration {self.iteration} (e.g. "
                                     f"{', '.join(bad[:3])}); not saving them")
        weights = self.work_dir / f"iter_{self.iteration}.safetensors"
        state_path = self.work_dir / f"iter_{self.iteration}.state.pt"
        save_model(weights, self.model, extra={"iteration": str(self.iteration)})
        state = {"iteration": self.iteration, "optimizer": self.optimizer.state_dict(), "rng": _rng_state(),
                 "best_ap": -1.0 if self.best_ap is None else self.best_ap}
        atomic_write(state_path, lambda tmp: _torch_save(state, tmp))
        # last: latest.json names a pair only once both files are complete
        latest = {"iteration": self.iteration, "weights": weights.name, "state": state_path.name}
        atomic_write(self.work_dir / "latest.json", lambda tmp: Path(tmp).write_text(json.dumps(latest)))
        self._prune()

    def _prune(self) -> None:
        keep = max(self.config.train.keep_checkpoints, 1)
        iters = sorted(int(p.name[len("iter_"):-len(".safetensors")]) for p in self.work_dir.glob("iter_*.safetensors")
                       if p.name[len("iter_"):-len(".safetensors")].isdigit())
        for old in iters[:-keep]:
            (self.work_dir / f"iter_{old}.safetensors").unlink(missing_ok=True)
            (self.work_dir / f"iter_{old}.state.pt").unlink(missing_ok=True)

    def resume(self) -> None:
        path = self.work_dir / "latest.json"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: {path} does not exist (no checkpoint to continue from)")
        latest = json.loads(path.read_text())
        load_model_weights(self.model, self.work_dir / latest["weights"])
        state = torch.load(self.work_dir / latest["state"], map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.best_ap = None if state["best_ap"] < 0 else float(state["best_ap"])
        _set_rng_state(state["rng"])
        # records a killed run wrote after this checkpoint would appear twice
        supersede_log_records(self.work_dir, self.iteration)

    # ----------------------------------------------------------------------------------------- steps
    def _set_train_mode(self) -> None:
        self.model.train()
        if self.config.train.norm_eval:
            for module in self.model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()

    def _step(self, batches) -> tuple[dict[str, float], float]:
        cfg = self.config
        accumulate = cfg.optim.accumulate
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        data_time = 0.0
        for micro in range(accumulate):
            fetch = time.perf_counter()
            images, targets = next(batches)
            images = [image.to(self.device) for image in images]
            targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
            data_time += time.perf_counter() - fetch
            parts = self.model(images, targets)  # torchvision's loss dict in training mode
            loss = sum(parts.values())
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at iteration {self.iteration + 1}"
                    f"{f' (micro-batch {micro + 1})' if accumulate > 1 else ''}: "
                    f"{ {k: round(v.item(), 4) for k, v in parts.items()} }; lower optim.lr or set optim.grad_clip, "
                    f"then continue with --resume")
            (loss / accumulate).backward()
            for key, value in (("loss", loss), *parts.items()):
                totals[key] = totals.get(key, 0.0) + value.item() / accumulate
        if cfg.optim.grad_clip:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.optim.grad_clip)
        self.optimizer.step()
        return totals, data_time

    def evaluate(self) -> dict[str, float]:
        rng = _rng_state()  # evaluation must not change the training random stream
        start = time.perf_counter()
        metrics = evaluate_instances(self.model, self.val_set, self.device)
        _set_rng_state(rng)
        self._set_train_mode()
        self._log({"kind": "eval", "iter": self.iteration, **metrics, "eval_time": time.perf_counter() - start})
        ap = metrics.get("segm_AP", math.nan)
        if math.isfinite(ap) and (self.best_ap is None or ap > self.best_ap):
            self.best_ap = ap
            save_model(self.work_dir / "best.safetensors", self.model,
                       extra={"iteration": str(self.iteration), "segm_AP": f"{ap:.6f}"})
        return metrics

    def train(self, resume: bool = False, progress: bool = True, stop_at: int | None = None,
              resume_changes: list | None = None) -> InstanceTrainResult:
        """Runs the schedule (or pauses after `stop_at`); `resume=True` continues from the latest checkpoint, with
        `resume_changes` ((key, run value, given value) from `--resume --override`) printed and logged."""
        from tqdm import tqdm

        cfg = self.config
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
            if resumed_run_is_complete(self.work_dir, self.iteration, cfg.schedule.iters):
                return InstanceTrainResult(self.iteration, None, self.best_ap, self.work_dir)
            self._note(f"resuming from iteration {self.iteration} of {cfg.schedule.iters}")
            if resume_changes:
                self._note(keep_run_config(self.work_dir, self.iteration, resume_changes))
        else:
            for stale in ("log.jsonl", "latest.json"):
                (self.work_dir / stale).unlink(missing_ok=True)
            if cfg.train.init_from:
                report = load_matching_weights(self.model, cfg.train.init_from)
                self._note(f"init_from {cfg.train.init_from}: loaded {len(report['loaded'])} tensors; skipped "
                           f"{len(report['mismatched'])} of another shape ({'; '.join(report['mismatched'][:4])}), "
                           f"{len(report['missing'])} missing, {len(report['unexpected'])} unexpected")
        atomic_write(self.work_dir / "config.yaml", lambda tmp: Path(tmp).write_text(dump_config(cfg)))
        accumulate = cfg.optim.accumulate
        sampler = StreamBatchSampler(len(self.train_set), cfg.data.batch_size, cfg.train.seed,
                                     start_step=self.iteration * accumulate)
        # the loader's own generator: creating its iterator would otherwise draw from the global RNG
        loader = DataLoader(self.train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                            collate_fn=collate_instances, persistent_workers=cfg.data.num_workers > 0,
                            generator=torch.Generator().manual_seed(cfg.train.seed))
        # the bar only on a terminal: in a log file the text lines say the same
        bar = tqdm(total=cfg.schedule.iters, initial=self.iteration, disable=not (progress and sys.stderr.isatty()),
                   dynamic_ncols=True, desc="train", mininterval=0.5)
        self._set_train_mode()
        batches = iter(loader)
        metrics = None
        window: list[tuple[dict[str, float], float, float]] = []
        while self.iteration < cfg.schedule.iters:
            lr = 0.0
            for group in self.optimizer.param_groups:
                group["lr"] = instance_lr(self.iteration, group["initial_lr"], cfg.schedule)
                lr = lr or group["lr"]
            start = time.perf_counter()
            values, data_time = self._step(batches)
            window.append((values, data_time, time.perf_counter() - start))
            self.iteration += 1
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            last = self.iteration == cfg.schedule.iters
            if self.iteration % cfg.train.log_interval == 0 or last:
                keys = window[0][0].keys()
                mean = {k: sum(v[k] for v, _, _ in window) / len(window) for k in keys}
                sec = sum(t for _, _, t in window) / len(window)
                self._log({"kind": "train", "iter": self.iteration, **mean, "lr": lr,
                           "data_time": sum(d for _, d, _ in window) / len(window), "sec_per_iter": sec,
                           "images_per_s": cfg.data.batch_size * accumulate / sec if sec > 0 else 0.0})
                eta = datetime.timedelta(seconds=round((cfg.schedule.iters - self.iteration) * sec))
                bar.write(f"iter {self.iteration}/{cfg.schedule.iters}  "
                          + "  ".join(f"{k} {v:.4f}" for k, v in mean.items())
                          + f"  lr {lr:.2e}  {sec:.3f} s/it  eta {eta}  mem {_peak_memory_mb(self.device):.0f} MB",
                          file=sys.stdout)
                window = []
            if self.val_set is not None and (self.iteration % cfg.eval.interval == 0 or last):
                metrics = self.evaluate()
                bar.write(f"iter {self.iteration}: segm AP {metrics.get('segm_AP', math.nan):.4f}, "
                          f"boundary AP {metrics.get('boundary_AP', math.nan):.4f}", file=sys.stdout)
            if self.iteration % cfg.train.checkpoint_interval == 0 or last or self.iteration == stop_at:
                self.save_checkpoint()
            if self.iteration == stop_at:
                break
        bar.close()
        return InstanceTrainResult(self.iteration, metrics, self.best_ap, self.work_dir)


def run_instance_training(config: RunConfig, resume: bool = False, progress: bool = True, stop_at: int | None = None,
                          init_from: str | None = None, device: torch.device | str | None = None,
                          resume_changes: list | None = None):
    """Trains the configured Mask R-CNN; returns (model, val_set, InstanceTrainResult)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("instance training runs in one process; start it without torchrun")
    if init_from is not None:
        config.train.init_from = init_from
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    seed_everything(config.train.seed)
    prepare_instance_data(config)
    train_set = build_instance_split(config, config.data.train_split, train=True)
    val_set = build_instance_split(config, config.data.val_split)
    if config.model.num_classes and config.model.num_classes != train_set.num_classes:
        print(f"[seglab] model.num_classes {config.model.num_classes} differs from the dataset's "
              f"{train_set.num_classes} (categories + background)", flush=True)
    model = build_instance_model(config, train_set.num_classes)
    trainer = InstanceTrainer(config, model, train_set, val_set, device=device)
    result = trainer.train(resume=resume, progress=progress, stop_at=stop_at, resume_changes=resume_changes)
    return trainer.model, val_set, result

