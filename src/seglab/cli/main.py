"""`seglab` command line: train, eval, predict, refine, models, weights, push, info, convert, export, data, demo.

Run configs whose `data.dataset` is an instance dataset (`coco_instances`, `shapes_instances`) train, evaluate
and predict with Mask R-CNN through `seglab.engine.instance`; the others are semantic segmentation runs.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the commands that use it: `seglab --help` stays fast
    import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _device(name: str | None) -> torch.device:
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_run_config(args):
    import torch

    from seglab.config import ConfigError, load_config

    if args.config is None:
        if not getattr(args, "resume", False) or not getattr(args, "work_dir", None):
            raise ConfigError("a run config is needed (seglab train CONFIG); only --resume --work-dir DIR can do "
                              "without one (it continues the run saved in DIR)")
        config = load_config(Path(args.work_dir) / "config.yaml", args.set)
    else:
        config = load_config(args.config, args.set)
    if getattr(args, "work_dir", None):
        config.train.work_dir = args.work_dir
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    return config


def _resume_config(config, args):
    """--resume continues the run as saved in work_dir/config.yaml; a differing config is an error unless
    --override, which continues with the given values (the differences are printed and logged by the trainer)."""
    from seglab.config import ConfigError, config_differences, format_differences, load_config

    work_dir = Path(config.train.work_dir)
    saved_path = work_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"--resume: {saved_path} not found; {work_dir} holds no run to continue (train without "
                          f"--resume to start one)")
    saved = load_config(saved_path)
    saved.train.work_dir = config.train.work_dir
    differences = config_differences(saved, config)
    if differences and not args.override:
        raise ConfigError(f"--resume: the given config differs from the run's own {saved_path} in "
                          f"{len(differences)} key(s): {format_differences(differences)} (run -> given). --resume "
                          f"continues the run as saved: resume without the changes, or add --override to continue "
                          f"with the given values")
    return config, differences


def _class_info(dataset, num_classes: int) -> tuple[list[str], list]:
    from seglab.palette import make_palette

    classes = list(getattr(dataset, "classes", None) or [str(i) for i in range(num_classes)])
    palette = getattr(dataset, "palette", None)
    return classes, make_palette(num_classes, palette=palette)


# ---------------------------------------------------------------------------------------------------- train / eval
def run_training(config, resume: bool = False, progress: bool = True, stop_at: int | None = None,
                 init_from: str | None = None, resume_changes: list | None = None):
    """Trains as `config` says; returns (model, val_set, TrainResult).

    Under torchrun (`torchrun --nproc-per-node N -m seglab.cli train CONFIG`) each process joins the job here and
    trains its share; rank 0 generates missing data, logs and writes checkpoints. `init_from` (a checkpoint)
    sets `train.init_from`: the tensors of that file that fit the model are loaded before training starts.
    `resume_changes` ((key, run value, given value) from `--resume --override`) are printed and logged.
    """
    from seglab.engine.distributed import barrier, is_main_process, setup_distributed
    from seglab.engine.run import (
        build_model,
        build_split,
        build_train_transform,
        evaluate,
        prepare_data,
        scale_mismatch,
    )
    from seglab.engine.trainer import Trainer, seed_everything

    if config.schedule.policy != "poly":
        from seglab.config import ConfigError

        raise ConfigError(f"schedule.policy {config.schedule.policy!r} is for instance configs only; semantic "
                          f"training uses poly")
    context = setup_distributed()
    if init_from is not None:
        config.train.init_from = init_from
    seed_everything(config.train.seed)
    if is_main_process():
        prepare_data(config)
    barrier()  # the other ranks read generated data only once rank 0 has written it
    train_set = build_split(config, config.data.train_split)
    val_set = build_split(config, config.data.val_split)
    num_classes = config.model.num_classes or len(train_set.classes)
    model = build_model(config, num_classes)
    device = context.device
    work_dir = Path(config.train.work_dir)
    classes, _ = _class_info(val_set, num_classes)
    scale_warning = scale_mismatch(config, val_set)
    # every evaluation redraws work_dir/confusion_matrix.png; the curves are drawn when training ends
    trainer = Trainer(config, model, train_set, build_train_transform(config),
                      lambda m: evaluate(m, val_set, config, num_classes, device,
                                         confusion_png=work_dir / "confusion_matrix.png", class_names=classes),
                      device=device)
    if scale_warning:
        trainer.notes.append(f"warning: {scale_warning}")
    result = trainer.train(resume=resume, progress=progress, stop_at=stop_at, resume_changes=resume_changes)
    if is_main_process() and (work_dir / "log.jsonl").is_file():
        from seglab.tools.visualize import plot_training_curve

        plot_training_curve(work_dir / "log.jsonl", work_dir / "training_curve.png")
    return trainer.model, val_set, result


def cmd_train(args) -> int:
    from seglab.engine.distributed import is_main_process, shutdown_distributed
    from seglab.engine.trainer import CheckpointWriteError, NonFiniteLossError

    config = _load_run_config(args)
    changes = None
    if args.resume:
        config, changes = _resume_config(config, args)
    elif args.override:
        from seglab.config import ConfigError

        raise ConfigError("--override goes with --resume (it lets a resumed run take the given config's values)")
    from seglab.engine.instance import is_instance_config

    if is_instance_config(config):
        return _train_instances(config, args, changes)
    try:
        _, _, result = run_training(config, resume=args.resume, progress=not args.no_progress,
                                    stop_at=args.stop_at, init_from=args.init_from, resume_changes=changes)
    except (NonFiniteLossError, CheckpointWriteError) as exc:
        if is_main_process():
            print(f"seglab train: error: {exc}", file=sys.stderr)
        shutdown_distributed(wait=False)  # a rank that failed alone must not wait for the others
        return 1
    except BaseException:
        shutdown_distributed(wait=False)
        raise
    if is_main_process():
        if result.best_miou is not None:  # the trainer printed each evaluation's table as it ran
            print(f"best mIoU {result.best_miou:.4f}")
        if result.bad_steps:
            print(f"{result.bad_steps} step(s) skipped for a non-finite loss (train.max_bad_losses)")
        print(f"checkpoints and logs in {result.work_dir}")
    shutdown_distributed()
    return 0


def _format_ap(metrics: dict) -> str:
    """One row per IoU type (segm, bbox, boundary) with AP, AP50, AP75, APs, APm, APl in percent."""
    from seglab.metrics_instance import AP_NAMES

    types = [t for t in ("segm", "bbox", "boundary") if f"{t}_AP" in metrics]
    lines = [f"{'':<10}" + "".join(f"{n:>8}" for n in AP_NAMES)]
    for t in types:
        cells = (metrics[f"{t}_{n}"] for n in AP_NAMES)
        lines.append(f"{t:<10}" + "".join(f"{'n/a' if v != v else f'{100 * v:.2f}':>8}" for v in cells))
    return "\n".join(lines)


def _train_instances(config, args, resume_changes=None) -> int:
    from seglab.engine.instance import run_instance_training
    from seglab.engine.trainer import NonFiniteLossError

    try:
        _, _, result = run_instance_training(config, resume=args.resume, progress=not args.no_progress,
                                             stop_at=args.stop_at, init_from=args.init_from,
                                             resume_changes=resume_changes)
    except NonFiniteLossError as exc:
        print(f"seglab train: error: {exc}", file=sys.stderr)
        return 1
    if result.final_metrics is not None:
        print(_format_ap(result.final_metrics))
    print(f"checkpoints and logs in {result.work_dir}")
    return 0


def _eval_instances(config, args) -> int:
    from seglab.engine.instance import build_instance_split, load_instance_checkpoint
    from seglab.instance.mask_rcnn import evaluate_instances

    device = _device(args.device)
    val_set = build_instance_split(config, args.split or config.data.val_split)
    model = load_instance_checkpoint(args.checkpoint).to(device)
    metrics = evaluate_instances(model, val_set, device)
    print(_format_ap(metrics))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(_jsonable(metrics), indent=2))
    return 0


def cmd_eval(args) -> int:
    from seglab.engine.distributed import is_main_process, setup_distributed, shutdown_distributed
    from seglab.engine.instance import is_instance_config
    from seglab.engine.run import build_model, build_split, evaluate, scale_mismatch
    from seglab.metrics import format_table

    config = _load_run_config(args)
    if is_instance_config(config):
        return _eval_instances(config, args)
    _apply_inference_flags(config, args)
    context = setup_distributed(args.device)  # under torchrun each rank evaluates a share; metrics are exact
    try:
        val_set = build_split(config, args.split or config.data.val_split)
        warning = scale_mismatch(config, val_set)
        if warning and is_main_process():
            print(f"seglab eval: warning: {warning}", file=sys.stderr)
        num_classes = config.model.num_classes or len(val_set.classes)
        model = build_model(config, num_classes, checkpoint=args.checkpoint)
        classes, _ = _class_info(val_set, num_classes)
        metrics = evaluate(model.to(context.device), val_set, config, num_classes, context.device,
                           confusion_png=args.confusion, class_names=classes)
    finally:
        shutdown_distributed()
    if is_main_process():
        print(format_table(metrics, classes))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(_jsonable(metrics), indent=2))
    return 0


def _apply_inference_flags(config, args) -> None:
    """`--mode/--crop-size/--stride/--flip/--scales` (predict and eval) into `config.eval`."""
    if args.mode:
        config.eval.mode = args.mode
    if args.crop_size:
        config.eval.crop_size = tuple(args.crop_size)
    if args.stride:
        config.eval.stride = tuple(args.stride)
    if args.flip:
        config.eval.flip = True
    if args.scales:
        config.eval.scales = tuple(args.scales)


def _add_inference_flags(p) -> None:
    p.add_argument("--mode", choices=("whole", "slide"), help="whole image, or sliding windows (default eval.mode)")
    p.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), help="sliding window (eval.crop_size)")
    p.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="sliding window stride (eval.stride)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", type=float, nargs="+", help="multi-scale: image scale factors (eval.scales)")


def _jsonable(metrics: dict) -> dict:
    import torch

    def plain(v):
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, float) and v != v:
            return None
        return v

    return {k: plain(v) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------------- predict
def _collect_inputs(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """(image files, other files found in the given folders); a missing input is an error."""
    files, others = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file()):
                (files if found.suffix.lower() in IMAGE_SUFFIXES else others).append(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(inputs)}")
    return files, others


def _skipped_summary(others: list[Path], unreadable: list[tuple[Path, str]]) -> str | None:
    """One line: how many files were skipped and why."""
    parts = []
    if others:
        suffixes = sorted({p.suffix.lower() or "(no suffix)" for p in others})
        parts.append(f"{len(others)} not an image ({', '.join(suffixes[:6])}{', ...' if len(suffixes) > 6 else ''})")
    if unreadable:
        shown = "; ".join(f"{path}: {why}" for path, why in unreadable[:3])
        parts.append(f"{len(unreadable)} unreadable ({shown}{'; ...' if len(unreadable) > 3 else ''})")
    return f"skipped {len(others) + len(unreadable)} file(s): {', '.join(parts)}" if parts else None


def _prediction_classes(config, from_config: bool, checkpoint: str | None, num_classes: int):
    """(class names, palette) for label PNGs and overlays: the run config's dataset (names and colours, also from
    its dataset.yaml), else the checkpoint's metadata (written by seglab train), else numbered classes."""
    from seglab.checkpoint import checkpoint_meta
    from seglab.data.datasets import dataset_classes
    from seglab.palette import make_palette

    found = None
    if from_config:
        options = {k: v for k, v in config.data.options.items() if k in ("classes", "palette")}
        found = dataset_classes(config.data.dataset, config.data.root, **options)
    if found is None and checkpoint is not None:
        meta = checkpoint_meta(checkpoint)
        if meta is not None and "classes" in meta.extra:
            classes = json.loads(meta.extra["classes"])
            palette = json.loads(meta.extra["palette"]) if "palette" in meta.extra else make_palette(len(classes))
            found = tuple(classes), palette
    if found is None or len(found[0]) != num_classes:
        return tuple(str(i) for i in range(num_classes)), make_palette(num_classes)
    return found[0], make_palette(num_classes, palette=found[1])


def cmd_predict(args) -> int:
    import torch
    from tqdm import tqdm

    from seglab.config import load_config
    from seglab.data.datasets import read_image
    from seglab.engine.instance import is_instance_checkpoint, is_instance_config
    from seglab.engine.run import build_model, build_test_transform
    from seglab.inference import predict
    from seglab.registry import create_model
    from seglab.tools.visualize import save_label_png, save_overlay_png

    if args.from_pretrained:
        if args.model or args.config or args.checkpoint or args.pretrained:
            raise SystemExit("predict: --from-pretrained takes the model, weights and pipeline from the saved folder "
                             "or repo; give no --model, --config, --checkpoint or --pretrained with it")
        return _predict_pretrained(args)
    if (args.model is None) == (args.config is None):
        raise SystemExit("predict: give exactly one of --model NAME or --config CONFIG")
    if (args.checkpoint is None) == (args.pretrained is None):
        raise SystemExit("predict: give exactly one of --checkpoint FILE or --pretrained TAG (`seglab weights NAME` "
                         "lists the tags)")
    if args.pretrained:
        if args.config:
            raise SystemExit("predict: --pretrained goes with --model NAME (the weights bring their test pipeline)")
        return _predict_pretrained(args)
    config = load_config(args.config, args.set)
    if is_instance_checkpoint(args.checkpoint) or (args.config and is_instance_config(config)):
        return _predict_instances(args)
    if args.model:
        model = create_model(args.model, num_classes=args.num_classes, checkpoint=args.checkpoint)
    else:
        model = build_model(config, args.num_classes, checkpoint=args.checkpoint)
    device = _device(args.device)
    model = model.to(device).eval()
    transform = build_test_transform(config)
    classes, palette = _prediction_classes(config, args.config is not None, args.checkpoint, model.num_classes)
    files, others = _collect_inputs(args.inputs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _apply_inference_flags(config, args)
    ev = config.eval
    align_corners = bool(getattr(model.decode_head, "align_corners", False))
    unreadable: list[tuple[Path, str]] = []
    written = 0
    for path in tqdm(files, desc="predict", unit="image", dynamic_ncols=True, disable=len(files) < 2):
        try:
            image = read_image(path)  # uint8 (3, H, W)
        except (OSError, ValueError) as exc:
            unreadable.append((path, _one_line(str(exc))))
            continue
        with torch.inference_mode():
            probs = predict(model, transform(image)[0][None].to(device), mode=ev.mode, crop_size=ev.crop_size,
                            stride=ev.stride, flip=ev.flip, scales=tuple(ev.scales),
                            out_size=tuple(image.shape[-2:]), align_corners=align_corners)
        labels = probs.argmax(1)[0].cpu().numpy()
        save_label_png(out / f"{path.stem}.png", labels, palette)
        save_overlay_png(out / f"{path.stem}_overlay.png", image.permute(1, 2, 0).numpy(), labels, palette,
                         class_names=classes)
        written += 1
    print(f"wrote {written} label PNG(s) and overlay(s) to {out}")
    summary = _skipped_summary(others, unreadable)
    if summary:
        print(f"seglab predict: {summary}", file=sys.stderr)
    return 0 if written else 1


def _predict_pretrained(args) -> int:
    """predict with published weights by tag, or a folder / Hub repo written by save_pretrained: the weights'
    classes, palette, normalisation and test pipeline (whole or slide), unless the inference flags say otherwise."""
    from tqdm import tqdm

    from seglab.hub.predictor import Predictor
    from seglab.hub.sharing import from_pretrained

    if args.from_pretrained:
        model = from_pretrained(args.from_pretrained)
    else:
        from seglab.hub.pretrained import create_model as create_pretrained

        model = create_pretrained(args.model, num_classes=args.num_classes, pretrained=args.pretrained)
    flags = {"mode": args.mode, "crop_size": args.crop_size, "stride": args.stride}
    predictor = Predictor(model, device=_device(args.device), flip=bool(args.flip),
                          scales=tuple(args.scales) if args.scales else (1.0,),
                          **{k: (tuple(v) if isinstance(v, list) else v) for k, v in flags.items() if v})
    meta = getattr(model, "seglab_meta", {})
    t = predictor
    print(f"{meta.get('weights') or model.model_name}: {len(t.classes)} classes, {t.mode} inference"
          + (f" (windows {t.crop_size}, stride {t.stride})" if t.mode == "slide" else "")
          + f", resize to {t.transform.scale or 'none'}, mean {list(t.transform.mean)}")
    files, others = _collect_inputs(args.inputs)
    out = Path(args.out)
    unreadable: list[tuple[Path, str]] = []
    written = 0
    for path in tqdm(files, desc="predict", unit="image", dynamic_ncols=True, disable=len(files) < 2):
        try:
            result = predictor(path)
        except (OSError, ValueError) as exc:
            unreadable.append((path, _one_line(str(exc))))
            continue
        result.save(out, path.stem)
        written += 1
    print(f"wrote {written} label PNG(s) and overlay(s) to {out}")
    summary = _skipped_summary(others, unreadable)
    if summary:
        print(f"seglab predict: {summary}", file=sys.stderr)
    return 0 if written else 1


# ---------------------------------------------------------------------------------------------------- instances
def _instance_map(masks: torch.Tensor, scores: torch.Tensor):
    """(H, W) uint8 map: instance k + 1 where mask k is the highest-scoring mask covering the pixel, else 0."""
    import numpy as np
    import torch

    height, width = masks.shape[-2:]
    out = np.zeros((height, width), np.uint8)
    order = torch.argsort(scores.cpu(), descending=False).tolist()  # low scores first: high ones paint over them
    m = masks.cpu().numpy()
    for k in order:
        out[m[k]] = min(k + 1, 254)  # an indexed PNG holds 255 colours (0..254); more instances share the last
    return out


def _write_instances(out: Path, stem: str, image: torch.Tensor, result: dict, class_names) -> None:
    """`{stem}.png` instance map, `{stem}_overlay.png`, `{stem}_masks.npz` (masks, boxes, labels, scores) and
    `{stem}.json` (per instance: label, class, score, box)."""

    import numpy as np

    from seglab.tools.visualize import make_palette, save_label_png, save_overlay_png

    masks, scores = result["masks"].cpu(), result["scores"].cpu()
    ids = _instance_map(masks, scores)
    palette = make_palette(255)
    # background (0) as the ignore index: black in the map, the plain image in the overlay
    save_label_png(out / f"{stem}.png", ids, palette, ignore_index=0)
    save_overlay_png(out / f"{stem}_overlay.png", image.permute(1, 2, 0).numpy(), ids, palette, ignore_index=0)
    np.savez_compressed(out / f"{stem}_masks.npz", masks=masks.numpy(), boxes=result["boxes"].cpu().numpy(),
                        labels=result["labels"].cpu().numpy(), scores=scores.numpy())
    names = list(class_names) if class_names else None
    records = [{"instance": k + 1, "label": int(label), "class": names[int(label)] if names and label < len(names)
                else str(int(label)), "score": float(score), "box": [float(v) for v in box]}
               for k, (label, score, box) in enumerate(zip(result["labels"].tolist(), scores.tolist(),
                                                            result["boxes"].cpu().tolist(), strict=True))]
    (out / f"{stem}.json").write_text(json.dumps(records, indent=1))


def _keep(result: dict, score_thresh: float) -> dict:
    keep = result["scores"] >= score_thresh
    return {k: v[keep] for k, v in result.items()}


def _predict_instances(args) -> int:
    from seglab.data.datasets import read_image
    from seglab.engine.instance import load_instance_checkpoint
    from seglab.instance.mask_rcnn import predict_instances

    device = _device(args.device)
    model = load_instance_checkpoint(args.checkpoint).to(device).eval()
    class_names = None
    if args.config:
        from seglab.config import load_config
        from seglab.engine.instance import build_instance_split

        config = load_config(args.config, args.set)
        try:
            class_names = build_instance_split(config, config.data.val_split).class_names
        except Exception:  # the names are a convenience: predicting does not need the dataset
            class_names = None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in _collect_inputs(args.inputs)[0]:
        image = read_image(path)
        result = _keep(predict_instances(model, image.to(device)), args.score_thresh)
        _write_instances(out, path.stem, image, result, class_names)
        print(f"{path} -> {out / (path.stem + '.png')} ({len(result['scores'])} instances)")
    return 0


def _load_bpr(path: str, device: torch.device):
    """A BPR network from a `seglab.instance.bpr_train.save_bpr` checkpoint, in eval mode on `device`."""

    from seglab.instance.bpr_train import load_bpr

    return load_bpr(path).to(device).eval()


def _coarse_masks_file(masks_arg: Path, stem: str) -> Path:
    if masks_arg.is_file():
        return masks_arg
    for name in (f"{stem}_masks.npz", f"{stem}.npz"):
        if (masks_arg / name).is_file():
            return masks_arg / name
    raise FileNotFoundError(f"--masks {masks_arg}: no {stem}_masks.npz or {stem}.npz there")


def cmd_refine(args) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from seglab.data.datasets import read_image
    from seglab.instance.bpr import normalize_image, refine

    if (args.detector is None) == (args.masks is None):
        raise SystemExit("refine: give exactly one of --detector CKPT (Mask R-CNN) or --masks NPZ_OR_DIR")
    device = _device(args.device)
    bpr = _load_bpr(args.bpr, device)
    detector = None
    if args.detector:
        from seglab.engine.instance import load_instance_checkpoint
        from seglab.instance.mask_rcnn import predict_instances

        detector = load_instance_checkpoint(args.detector).to(device).eval()
    inputs = _collect_inputs(args.inputs)[0]
    if args.masks and Path(args.masks).is_file() and len(inputs) > 1:
        raise SystemExit("refine: one --masks file fits one image; pass a folder of {stem}_masks.npz for several")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    for path in inputs:
        image = read_image(path)
        if detector is not None:
            result = _keep(predict_instances(detector, image.to(device)), args.score_thresh)
            coarse = result["masks"]
        else:
            source = _coarse_masks_file(Path(args.masks), path.stem)
            with np.load(source) as data:
                if "masks" not in data:
                    raise ValueError(f"{source} has no 'masks' array (N, H, W)")
                coarse = torch.from_numpy(data["masks"].astype(bool))
            if coarse.dim() != 3 or tuple(coarse.shape[-2:]) != tuple(image.shape[-2:]):
                raise ValueError(f"{source}: masks {tuple(coarse.shape)} do not fit image {path} "
                                 f"({image.shape[-2]}x{image.shape[-1]}); expected (N, H, W)")
        coarse = coarse.to(device)
        refined = (refine(normalize_image(image.to(device)), coarse, bpr, patch_size=args.patch_size,
                          nms_iou=args.nms_iou, timings=timings) if len(coarse) else coarse)
        folder = out / path.stem
        folder.mkdir(parents=True, exist_ok=True)
        for k, mask in enumerate(refined.cpu().numpy()):
            Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{k:03d}.png")
        np.savez_compressed(out / f"{path.stem}_refined.npz", masks=refined.cpu().numpy(),
                            coarse=coarse.cpu().numpy())
        changed = int((refined != coarse).sum())
        print(f"{path}: {len(refined)} masks refined, {changed} pixels changed -> {folder}/")
    if timings:
        total = sum(timings.values())
        print("refinement time: " + ", ".join(f"{k} {v:.3f}s" for k, v in timings.items()) + f" (total {total:.3f}s)")
    return 0


# ---------------------------------------------------------------------------------------------------- models / info
def cmd_models(args) -> int:
    from seglab.catalog import format_model_table, load_catalog, select

    rows = select(load_catalog(), args.pattern)  # from the catalogue: no torch, no model built
    if args.flops:
        from seglab.tools.flops import model_table

        rows = model_table([row["name"] for row in rows], size=(args.size, args.size))
    print(format_model_table(rows, size=args.size))
    return 0


def cmd_weights(args) -> int:
    from seglab.hub.download import cached_path, is_cached, seglab_home
    from seglab.hub.table import list_weights, load_table

    rows = list_weights(args.pattern)
    if not rows:
        table = load_table()
        reasons = [u for u in table.unpublished if fnmatch.fnmatch(u.get("model", ""), args.pattern)]
        for u in reasons:
            print(f"{u['model']}: {u['reason']}")
        if not reasons:
            print(f"no weights match {args.pattern!r}; `seglab weights` lists them all")
        return 0 if reasons else 1
    header = ("model", "tag", "dataset", "mIoU", "source", "convert", "cached")
    lines = []
    for e in rows:
        where = {"hub": f"hf:{e.hub.repo}" if e.hub else "", "url": e.url or "", "manual": "manual"}[e.fetch]
        if e.fetch == "url":
            where = where.split("://", 1)[-1].split("/", 1)[0]
        miou = "" if e.miou is None else f"{e.miou:.2f}"
        lines.append((e.model, e.tag + (" *" if e.default else ""), e.dataset, miou, where, e.convert,
                      "yes" if is_cached(e) else ""))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    for line in (header, *lines):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())
    print(f"{len(rows)} row(s); * = the model's default (pretrained=True); cache: {seglab_home()}")
    if args.verbose:
        for e in rows:
            print(f"\n{e.name}\n  from: {e.location}\n  file: {cached_path(e)}\n  licence: {e.licence}"
                  + (f"\n  notes: {e.notes}" if e.notes else ""))
    return 0


def cmd_push(args) -> int:
    from seglab.hub.pretrained import create_model as create_pretrained

    model = create_pretrained(args.model, checkpoint=args.checkpoint) if args.model else None
    if model is None:
        from seglab.checkpoint import read_checkpoint_meta

        name = read_checkpoint_meta(args.checkpoint).model
        model = create_pretrained(name, checkpoint=args.checkpoint)
    metrics = {}
    if args.miou is not None:
        metrics["mIoU"] = args.miou
    if args.dir:
        model.save_pretrained(args.dir, **({"metrics": metrics} if metrics else {}))
        print(f"{args.checkpoint} -> {args.dir} (config.json, model.safetensors, README.md)")
    if args.repo_id:
        url = model.push_to_hub(args.repo_id, private=args.private or None,
                                **({"metrics": metrics} if metrics else {}))
        print(f"{args.checkpoint} -> {args.repo_id}: {url}")
    return 0


def cmd_info(args) -> int:
    import dataclasses

    from seglab.registry import create_model, get_entry, resolve_options
    from seglab.tools.flops import count_flops, count_params, stage_shapes

    entry = get_entry(args.name)
    model = create_model(args.name, num_classes=args.num_classes).eval()
    size = (args.height, args.width)
    print(f"{args.name}: {entry.description}")
    print(f"options: {dataclasses.asdict(resolve_options(args.name, {}))}")
    print(f"input (1, 3, {size[0]}, {size[1]})")
    for name, shape in stage_shapes(model, size):
        print(f"  {name:<24}{tuple(shape)}")
    print(f"params: {count_params(model) / 1e6:.3f} M" +
          (f" (paper: {entry.published_params_m} M)" if entry.published_params_m else ""))
    print(f"GFLOPs (multiply-adds) at {size[0]}x{size[1]}: {count_flops(model, size) / 1e9:.2f}")
    return 0


# ---------------------------------------------------------------------------------------------------- convert / export
def _parse_overrides(items: list[str], model_name: str, current: dict) -> dict:
    """`["align_corners=true", ...]` -> {"align_corners": True, ...}, checked against the model's options."""
    import yaml

    from seglab.registry import resolve_options

    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"seglab convert: --set {item!r}: expected OPTION=VALUE, e.g. align_corners=true")
        parsed[key] = yaml.safe_load(value)
    try:
        resolve_options(model_name, {**current, **parsed})
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"seglab convert: --set: {exc}") from exc
    return parsed


def _check_fits(result, model_name: str) -> None:
    """Fails, naming the tensors, when the converted weights no longer fit the model built with the overrides."""
    import torch

    from seglab.checkpoint import describe_mismatch
    from seglab.registry import create_model

    with torch.device("meta"):
        model = create_model(model_name, num_classes=result.num_classes, **result.overrides)
    own = model.backbone.state_dict() if result.backbone_only else model.state_dict()
    state = ({k[len("backbone."):]: v for k, v in result.state_dict.items()} if result.backbone_only
             else result.state_dict)
    problems = describe_mismatch(own, state)
    if problems:
        head = f"seglab convert: with --set {result.overrides}, the weights do not fit {model_name}:"
        raise SystemExit("\n".join([head, *problems]))


def cmd_convert(args) -> int:
    from seglab.checkpoint import save_weights
    from seglab.convert import convert_checkpoint

    result = convert_checkpoint(args.src, args.source, args.model, img_size=args.img_size)
    if args.set:
        if args.model.startswith("bpr_"):
            raise SystemExit("seglab convert: --set applies to registered models, not to BPR networks")
        result.overrides.update(_parse_overrides(args.set, args.model, result.overrides))
        _check_fits(result, args.model)
    if args.model.startswith("bpr_"):  # a BPR network is not a registered model: write a `load_bpr` checkpoint
        from seglab.instance.bpr import build_bpr
        from seglab.instance.bpr_train import save_bpr

        network = build_bpr(args.model)
        network.load_state_dict(result.state_dict, strict=True)
        save_bpr(args.dst, network, args.model)
        print(f"{args.src} ({args.source}) -> {args.dst}: {len(result.state_dict)} tensors, BPR network "
              f"{args.model} (seglab refine --bpr {args.dst})")
        return 0
    extra = {"converted_from": args.source}
    if result.backbone_only:
        extra["backbone_only"] = "true"
    save_weights(args.dst, result.state_dict, args.model, result.num_classes, result.overrides, extra=extra)
    kind = "backbone only (use as model.pretrained)" if result.backbone_only else f"num_classes {result.num_classes}"
    print(f"{args.src} ({args.source}) -> {args.dst}: {len(result.state_dict)} tensors, {kind}, "
          f"overrides {result.overrides}, dropped {len(result.dropped)} keys")
    return 0


def cmd_export(args) -> int:
    from seglab.export.onnx import check_onnx, export_onnx
    from seglab.registry import create_model

    model = create_model(args.model, num_classes=args.num_classes, checkpoint=args.checkpoint).eval()
    path = export_onnx(model, args.out, height=args.height, width=args.width, opset=args.opset)
    print(f"wrote {path}")
    if args.check:
        diff = check_onnx(model, path, sizes=[(args.height, args.width), (args.height // 2 + 3, args.width - 5)])
        print(f"onnxruntime vs PyTorch max abs diff: {diff:.2e}")
    return 0


# ---------------------------------------------------------------------------------------------------- data
def cmd_data_shapes(args) -> int:
    from seglab.data.synthetic import generate_shapes

    start = time.perf_counter()
    root = generate_shapes(args.out, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=args.seed)
    print(f"wrote {args.n_train} train + {args.n_val} val images to {root} in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_data_shapes_instances(args) -> int:
    from seglab.data.coco_instances import generate_shapes_instances

    start = time.perf_counter()
    root = generate_shapes_instances(args.out, args.n_train, args.n_val, args.size, args.seed)
    print(f"wrote {args.n_train} train + {args.n_val} val instance images (COCO JSON) to {root} in "
          f"{time.perf_counter() - start:.1f}s")
    return 0


def cmd_data_check(args) -> int:
    from seglab.data.check import check_dataset

    report = check_dataset(args.source, dataset=args.dataset, splits=args.split or None, samples=args.samples)
    print(report.format())
    return 0 if report.ok else 1


def cmd_data_convert(args) -> int:
    from seglab.data import converters

    start = time.perf_counter()
    if args.kind == "cityscapes":
        result = converters.convert_cityscapes(args.root, workers=args.workers)
    elif args.kind == "voc-aug":
        result = converters.convert_voc_aug(args.root, args.sbd, out_dir=args.out, workers=args.workers)
    elif args.variant == "10k":
        result = converters.convert_coco_stuff_10k(args.root, workers=args.workers)
    else:
        result = converters.convert_coco_stuff_164k(args.root, workers=args.workers)
    print(f"{args.kind}: wrote {result.summary()} in {time.perf_counter() - start:.1f}s")
    return 0


# ---------------------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from seglab.demo import run_demo

    return run_demo(args.config, args.out, args.set)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seglab", description="Semantic segmentation in pure PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_config(p, required=True):
        if required:
            p.add_argument("config", help="YAML run config")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")

    p = sub.add_parser("train", help="train a model from a run config")
    p.add_argument("config", nargs="?", help="YAML run config (optional with --resume --work-dir DIR: the run's "
                                             "own DIR/config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in work_dir from its latest checkpoint, with its saved config.yaml; a "
                        "config that differs from it is an error unless --override")
    p.add_argument("--override", action="store_true",
                   help="with --resume: continue with the given config's values where they differ from the run's "
                        "(printed and recorded in the run's log)")
    p.add_argument("--work-dir", help="override train.work_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-at", type=int, metavar="ITER",
                   help="pause after this iteration (checkpointed); continue later with --resume")
    p.add_argument("--init-from", metavar="CKPT",
                   help="fine-tune: load the tensors of this checkpoint that fit the model, report the others")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the config's validation split")
    add_config(p)
    p.add_argument("--checkpoint", required=True,
                   help="seglab safetensors checkpoint, or a plain state dict of the model (.safetensors, .pth, .pt)")
    p.add_argument("--split", help="dataset split (default data.val_split)")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--confusion", metavar="PNG", help="draw the row-normalised confusion matrix here")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    _add_inference_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="segment images; writes label PNGs and colour overlays")
    p.add_argument("--model", help="registered model name")
    p.add_argument("--config", help="YAML run config (model, test transform, inference mode)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-classes", type=int, help="default: the checkpoint's (read from a plain state dict's "
                                                   "classifier)")
    p.add_argument("--checkpoint",
                   help="seglab safetensors checkpoint, or a plain state dict of the model (.safetensors, .pth, .pt)")
    p.add_argument("--pretrained", metavar="TAG",
                   help="published weights of --model by tag (`seglab weights NAME`), with their classes and test "
                        "pipeline; downloaded and converted on first use")
    p.add_argument("--from-pretrained", metavar="DIR_OR_REPO",
                   help="a folder written by save_pretrained / `seglab push --dir`, or a Hugging Face repo id")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    _add_inference_flags(p)
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="instance models: keep detections scoring at least this (default 0.5)")
    p.add_argument("--device")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("refine", help="refine coarse instance masks with BPR; writes one PNG per instance")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--bpr", required=True, help="BPR checkpoint (save_bpr: bpr_hrnet18s / bpr_hrnet48)")
    p.add_argument("--detector", help="Mask R-CNN checkpoint whose masks are refined")
    p.add_argument("--masks", help="coarse masks instead: a .npz with 'masks' (N, H, W), or a folder of "
                                   "{stem}_masks.npz (what `seglab predict` writes for instance models)")
    p.add_argument("--out", required=True, help="output folder: {stem}/{k:03d}.png and {stem}_refined.npz")
    p.add_argument("--score-thresh", type=float, default=0.5, help="with --detector: detections kept")
    p.add_argument("--patch-size", type=int, default=64, help="boundary patch side in pixels (BPR: 64)")
    p.add_argument("--nms-iou", type=float, default=0.55, help="patch NMS IoU (BPR: 0.55 Cityscapes, 0.25 COCO)")
    p.add_argument("--device")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("models", help="list models (name filter, parameters; GFLOPs with --flops)")
    p.add_argument("pattern", nargs="?", default="*",
                   help="a part of the name (segformer) or a shell pattern (upernet_*_t*); default all")
    p.add_argument("--flops", action="store_true", help="also count GFLOPs (a forward pass per model: slower)")
    p.add_argument("--size", type=int, default=512, help="input side for --flops")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("weights", help="list the published weights (model, tag, dataset, mIoU, source, cached)")
    p.add_argument("pattern", nargs="?", default="*", help="model name or model:tag, shell-style (e.g. 'segformer_*')")
    p.add_argument("-v", "--verbose", action="store_true", help="also each row's source, cache file and licence")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("push", help="share a checkpoint as a Hugging Face model repo (or a save_pretrained folder)")
    p.add_argument("checkpoint", help="seglab safetensors checkpoint (e.g. work_dirs/run/best.safetensors)")
    p.add_argument("repo_id", nargs="?", help="owner/name on the Hub (HF_ENDPOINT, HF_TOKEN apply)")
    p.add_argument("--dir", help="write the folder (config.json, model.safetensors, README.md) here")
    p.add_argument("--model", help="model name, for a plain state dict without seglab metadata")
    p.add_argument("--miou", type=float, help="the mIoU to state in the model card")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("info", help="per-stage output shapes, parameters and FLOPs of a model")
    p.add_argument("name")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a foreign checkpoint to a seglab safetensors file")
    p.add_argument("--source", required=True, choices=("hf", "official", "mmseg", "timm", "torchvision"),
                   help="the layout of SRC (timm / torchvision: ImageNet backbones from those libraries)")
    p.add_argument("--model", required=True)
    p.add_argument("--img-size", type=int, default=None,
                   help="ViT models (setr_*, segmenter_vit_*, segvit_*): resample an ImageNet ViT's position embedding "
                        "for this crop (e.g. 768, 480; default the model's) and record it as the img_size override")
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                   help="a constructor option recorded in the checkpoint over the converter's (e.g. "
                        "align_corners=true for the HRNet-OCR ADE20K / COCO-Stuff files); values are YAML scalars")
    p.add_argument("src", help="checkpoint: .safetensors, .pth/.pt/.bin/.ckpt (weights_only), or a JAX ViT .npz")
    p.add_argument("dst")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch, height, width)")
    p.add_argument("--model", required=True)
    p.add_argument("--num-classes", type=int, help="default: the checkpoint's (read from a plain state dict's "
                                                   "classifier)")
    p.add_argument("--checkpoint",
                   help="seglab safetensors checkpoint, or a plain state dict of the model (.safetensors, .pth, .pt)")
    p.add_argument("--out", required=True)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--check", action="store_true", help="compare onnxruntime with PyTorch at two sizes")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("shapes", help="generate the synthetic shapes dataset")
    q.add_argument("--out", required=True)
    q.add_argument("--n-train", type=int, default=1000)
    q.add_argument("--n-val", type=int, default=100)
    q.add_argument("--size", type=int, default=128)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data_shapes)
    q = data_sub.add_parser("shapes-instances", help="generate the synthetic instance shapes (COCO JSON)")
    q.add_argument("--out", required=True)
    q.add_argument("--n-train", type=int, default=200)
    q.add_argument("--n-val", type=int, default=50)
    q.add_argument("--size", type=int, default=128)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_data_shapes_instances)
    q = data_sub.add_parser("check", help="check a dataset's layout, pairs, files and labels; exit 1 on problems")
    q.add_argument("source", metavar="CONFIG_OR_DIR", help="a run config (its data section) or a dataset root")
    q.add_argument("--dataset", help="dataset name for a folder (default folder); see docs/datasets.md")
    q.add_argument("--split", action="append", default=[], help="split to check (repeatable; default train, val)")
    q.add_argument("--samples", type=int, default=100, help="pairs decoded per split (0: all)")
    q.set_defaults(func=cmd_data_check)
    q = data_sub.add_parser("convert", help="prepare a public dataset's masks and lists (see docs/datasets.md)")
    kinds = q.add_subparsers(dest="kind", required=True)
    c = kinds.add_parser("cityscapes", help="gtFine *_labelIds.png -> *_labelTrainIds.png (19 train ids)")
    c.add_argument("root", help="Cityscapes root (holding gtFine/)")
    c = kinds.add_parser("voc-aug", help="SBD cls/*.mat -> SegmentationClassAug/*.png, aug.txt, trainaug.txt")
    c.add_argument("root", help="VOCdevkit (holding VOC2012/)")
    c.add_argument("sbd", help="SBD benchmark_RELEASE (holding dataset/cls/)")
    c.add_argument("--out", help="mask folder (default VOC2012/SegmentationClassAug)")
    c = kinds.add_parser("coco-stuff", help="COCO-Stuff ids -> train ids (*_labelTrainIds.png)")
    c.add_argument("root", help="COCO-Stuff root (164k: images/, annotations/; 10k: the unpacked v1.1 folder)")
    c.add_argument("--variant", choices=("164k", "10k"), default="164k")
    for c in kinds.choices.values():
        c.add_argument("--workers", type=int, default=1, help="processes")
    q.set_defaults(func=cmd_data_convert)

    p = sub.add_parser("demo", help="generate shapes, train segformer_b0, evaluate, draw predictions")
    p.add_argument("--config", default="configs/segformer/segformer_b0_shapes.yaml")
    p.add_argument("--out", default="work_dirs/demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)  # before the imports below (torch): `--help` answers at once

    from seglab.hub.download import WeightsDownloadError  # torch-free too
    from seglab.registry import CheckpointNote  # torch-free, as config.py: `seglab models` never loads torch

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # one line each, without the source line Python would echo; notes are what create_model inferred from a
        # checkpoint (e.g. the class count of a plain state dict)
        kind = "note" if issubclass(category, CheckpointNote) else "warning"
        print(f"seglab {args.command}: {kind}: {_one_line(str(message))}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", CheckpointNote)
            warnings.showwarning = show_warning
            return args.func(args)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError, WeightsDownloadError) as exc:  # ConfigError,
        # DatasetError, UnknownWeightsError too
        print(f"seglab {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2


def _one_line(message: str) -> str:
    """A multi-line message (e.g. a list of mismatching tensors) as one line: its lines joined by "; "."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(f"{line};" if i < len(lines) - 1 and not line.endswith(":") else line
                    for i, line in enumerate(lines))


if __name__ == "__main__":
    sys.exit(main())
