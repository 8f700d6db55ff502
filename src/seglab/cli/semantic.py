"""`seglab train / eval / predict` for semantic segmentation runs, and the parsers of those three commands.

A run config whose `data.dataset` is an instance dataset, or a Mask R-CNN checkpoint, is handed to
`seglab.cli.instance` (imported only then): deciding reads the config and the checkpoint's metadata only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from seglab.cli.common import (
    CHECKPOINT_HELP,
    NUM_CLASSES_HELP,
    add_config_args,
    add_inference_flags,
    apply_inference_flags,
    choose_device,
    class_info,
    collect_inputs,
    is_instance_checkpoint,
    is_instance_config,
    jsonable,
    load_run_config,
    one_line,
    skipped_summary,
)


# ---------------------------------------------------------------------------------------------------- train / eval
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
    classes, _ = class_info(val_set, num_classes)
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

    config = load_run_config(args)
    changes = None
    if args.resume:
        config, changes = _resume_config(config, args)
    elif args.override:
        from seglab.config import ConfigError

        raise ConfigError("--override goes with --resume (it lets a resumed run take the given config's values)")
    if is_instance_config(config):
        from seglab.cli import instance

        return instance.train(config, args, changes)
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


def cmd_eval(args) -> int:
    from seglab.engine.distributed import is_main_process, setup_distributed, shutdown_distributed
    from seglab.engine.run import build_model, build_split, evaluate, scale_mismatch
    from seglab.metrics import format_table

    config = load_run_config(args)
    if is_instance_config(config):
        from seglab.cli import instance

        return instance.evaluate(config, args)
    apply_inference_flags(config, args)
    context = setup_distributed(args.device)  # under torchrun each rank evaluates a share; metrics are exact
    try:
        val_set = build_split(config, args.split or config.data.val_split)
        warning = scale_mismatch(config, val_set)
        if warning and is_main_process():
            print(f"seglab eval: warning: {warning}", file=sys.stderr)
        num_classes = config.model.num_classes or len(val_set.classes)
        model = build_model(config, num_classes, checkpoint=args.checkpoint)
        classes, _ = class_info(val_set, num_classes)
        metrics = evaluate(model.to(context.device), val_set, config, num_classes, context.device,
                           confusion_png=args.confusion, class_names=classes)
    finally:
        shutdown_distributed()
    if is_main_process():
        print(format_table(metrics, classes))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(jsonable(metrics), indent=2))
    return 0


# ---------------------------------------------------------------------------------------------------- predict
def prediction_classes(config, from_config: bool, checkpoint: str | None, num_classes: int):
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
    from seglab.config import load_config, test_pipeline
    from seglab.engine.run import build_model
    from seglab.hub.predictor import Predictor
    from seglab.registry import create_model

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
        from seglab.cli import instance

        return instance.predict(args)
    if args.model:
        model = create_model(args.model, num_classes=args.num_classes, checkpoint=args.checkpoint)
    else:
        model = build_model(config, args.num_classes, checkpoint=args.checkpoint)
    classes, palette = prediction_classes(config, args.config is not None, args.checkpoint, model.num_classes)
    apply_inference_flags(config, args)
    # the run config's pipeline (normalisation, test resize, whole / slide) and the classes found for the model
    model.seglab_meta = {**test_pipeline(config), "classes": list(classes), "palette": [list(c) for c in palette]}
    ev = config.eval
    predictor = Predictor(model, device=choose_device(args.device), flip=ev.flip, scales=tuple(ev.scales),
                          max_pixels=args.max_pixels, window_batch=args.window_batch)
    return write_predictions(predictor, args.inputs, Path(args.out), tiled=args.tiled)


def write_predictions(predictor, inputs: list[str], out: Path, tiled: bool = False) -> int:
    """Runs `predictor` on every image of `inputs` (files or folders), writing `<stem>.png` (indexed labels; with
    `tiled` a tiled TIFF `<stem>.tif`) and `<stem>_overlay.png` (with a legend) into `out`; reports skipped and
    unreadable files. Exit code 1 if none."""
    from tqdm import tqdm

    files, others = collect_inputs(inputs)
    out.mkdir(parents=True, exist_ok=True)
    unreadable: list[tuple[Path, str]] = []
    written = 0
    for path in tqdm(files, desc="predict", unit="image", dynamic_ncols=True, disable=len(files) < 2):
        try:
            result = predictor(path)
        except (OSError, ValueError) as exc:
            unreadable.append((path, one_line(str(exc))))
            continue
        result.save(out, path.stem, tiled=tiled)
        written += 1
    print(f"wrote {written} label {'TIFF' if tiled else 'PNG'}(s) and overlay(s) to {out}")
    summary = skipped_summary(others, unreadable)
    if summary:
        print(f"seglab predict: {summary}", file=sys.stderr)
    return 0 if written else 1


def _predict_pretrained(args) -> int:
    """predict with published weights by tag, or a folder / Hub repo written by save_pretrained: the weights'
    classes, palette, normalisation and test pipeline (whole or slide), unless the inference flags say otherwise."""
    from seglab.hub.predictor import Predictor
    from seglab.hub.sharing import from_pretrained

    if args.from_pretrained:
        model = from_pretrained(args.from_pretrained)
    else:
        from seglab.hub.pretrained import create_model as create_pretrained

        model = create_pretrained(args.model, num_classes=args.num_classes, pretrained=args.pretrained)
    flags = {"mode": args.mode, "crop_size": args.crop_size, "stride": args.stride}
    predictor = Predictor(model, device=choose_device(args.device), flip=bool(args.flip),
                          scales=tuple(args.scales) if args.scales else (1.0,), max_pixels=args.max_pixels,
                          window_batch=args.window_batch,
                          **{k: (tuple(v) if isinstance(v, list) else v) for k, v in flags.items() if v})
    meta = getattr(model, "seglab_meta", {})
    t = predictor
    print(f"{meta.get('weights') or model.model_name}: {len(t.classes)} classes, {t.mode} inference"
          + (f" (windows {t.crop_size}, stride {t.stride})" if t.mode == "slide" else "")
          + f", resize to {t.transform.scale or 'none'}, mean {list(t.transform.mean)}")
    return write_predictions(predictor, args.inputs, Path(args.out), tiled=args.tiled)


# ---------------------------------------------------------------------------------------------------- parsers
def add_parsers(sub) -> None:
    """`seglab train`, `seglab eval`, `seglab predict` (semantic and instance runs)."""
    p = sub.add_parser("train", help="train a model from a run config")
    p.add_argument("config", nargs="?", help="YAML run config (optional with --resume --work-dir DIR: the run's "
                                             "own DIR/config.yaml)")
    add_config_args(p, required=False)
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
    add_config_args(p)
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--split", help="dataset split (default data.val_split)")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--confusion", metavar="PNG", help="draw the row-normalised confusion matrix here")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_inference_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="segment images; writes label PNGs and colour overlays")
    p.add_argument("--model", help="registered model name")
    p.add_argument("--config", help="YAML run config (model, test transform, inference mode)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-classes", type=int, help=NUM_CLASSES_HELP)
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--pretrained", metavar="TAG",
                   help="published weights of --model by tag (`seglab weights NAME`), with their classes and test "
                        "pipeline; downloaded and converted on first use")
    p.add_argument("--from-pretrained", metavar="DIR_OR_REPO",
                   help="a folder written by save_pretrained / `seglab push --dir`, or a Hugging Face repo id")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    add_inference_flags(p)
    p.add_argument("--max-pixels", type=int, metavar="N",
                   help="read images of up to N pixels (width x height), past PIL's decompression-bomb limit of "
                        "179 M pixels; slide inference streams, so memory stays bounded at any size")
    p.add_argument("--window-batch", type=int, metavar="N",
                   help="slide windows per forward pass (default 8 on a GPU, 2 on the CPU; fewer use less memory)")
    p.add_argument("--tiled", action="store_true",
                   help="write each label map as a tiled, compressed TIFF (<stem>.tif, with the palette) instead of "
                        "a PNG: what GIS and slide viewers open for huge maps")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="instance models: keep detections scoring at least this (default 0.5)")
    p.add_argument("--device")
    p.set_defaults(func=cmd_predict)
