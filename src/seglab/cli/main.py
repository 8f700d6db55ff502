"""`seglab` command line: train, eval, predict, models, info, convert, export, data, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_run_config(args):
    from seglab.config import load_config

    config = load_config(args.config, args.set)
    if getattr(args, "work_dir", None):
        config.train.work_dir = args.work_dir
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    return config


def _class_info(dataset, num_classes: int) -> tuple[list[str], list]:
    from seglab.tools.visualize import make_palette

    classes = list(getattr(dataset, "classes", None) or [str(i) for i in range(num_classes)])
    palette = getattr(dataset, "palette", None)
    return classes, make_palette(num_classes, palette=palette)


# ---------------------------------------------------------------------------------------------------- train / eval
def run_training(config, resume: bool = False, progress: bool = True, stop_at: int | None = None,
                 init_from: str | None = None):
    """Trains as `config` says; returns (model, val_set, TrainResult).

    Under torchrun (`torchrun --nproc-per-node N -m seglab.cli train CONFIG`) each process joins the job here and
    trains its share; rank 0 generates missing data, logs and writes checkpoints. `init_from` (a checkpoint)
    sets `train.init_from`: the tensors of that file that fit the model are loaded before training starts.
    """
    from seglab.engine.distributed import barrier, is_main_process, setup_distributed
    from seglab.engine.run import build_model, build_split, build_train_transform, evaluate, prepare_data
    from seglab.engine.trainer import Trainer, seed_everything

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
    # every evaluation redraws work_dir/confusion_matrix.png; the curves are drawn when training ends
    trainer = Trainer(config, model, train_set, build_train_transform(config),
                      lambda m: evaluate(m, val_set, config, num_classes, device,
                                         confusion_png=work_dir / "confusion_matrix.png", class_names=classes),
                      device=device)
    result = trainer.train(resume=resume, progress=progress, stop_at=stop_at)
    if is_main_process() and (work_dir / "log.jsonl").is_file():
        from seglab.tools.visualize import plot_training_curve

        plot_training_curve(work_dir / "log.jsonl", work_dir / "training_curve.png")
    return trainer.model, val_set, result


def cmd_train(args) -> int:
    from seglab.engine.distributed import is_main_process, shutdown_distributed
    from seglab.engine.trainer import CheckpointWriteError, NonFiniteLossError

    config = _load_run_config(args)
    try:
        _, val_set, result = run_training(config, resume=args.resume, progress=not args.no_progress,
                                          stop_at=args.stop_at, init_from=args.init_from)
    except (NonFiniteLossError, CheckpointWriteError) as exc:
        if is_main_process():
            print(f"seglab train: error: {exc}", file=sys.stderr)
        shutdown_distributed(wait=False)  # a rank that failed alone must not wait for the others
        return 1
    except BaseException:
        shutdown_distributed(wait=False)
        raise
    if is_main_process():
        if result.final_metrics is not None:
            from seglab.metrics import format_table

            classes, _ = _class_info(val_set, len(result.final_metrics["IoU"]))
            print(format_table(result.final_metrics, classes))
        if result.bad_steps:
            print(f"{result.bad_steps} step(s) skipped for a non-finite loss (train.max_bad_losses)")
        print(f"checkpoints and logs in {result.work_dir}")
    shutdown_distributed()
    return 0


def cmd_eval(args) -> int:
    from seglab.engine.distributed import is_main_process, setup_distributed, shutdown_distributed
    from seglab.engine.run import build_model, build_split, evaluate
    from seglab.metrics import format_table

    config = _load_run_config(args)
    context = setup_distributed(args.device)  # under torchrun each rank evaluates a share; metrics are exact
    try:
        val_set = build_split(config, args.split or config.data.val_split)
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


def _jsonable(metrics: dict) -> dict:
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
def _collect_inputs(inputs: list[str]) -> list[Path]:
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(inputs)}")
    return files


def cmd_predict(args) -> int:
    from seglab.config import load_config
    from seglab.data.datasets import read_image
    from seglab.engine.run import build_model, build_test_transform
    from seglab.inference import predict
    from seglab.registry import create_model
    from seglab.tools.visualize import make_palette, save_label_png, save_overlay_png

    if (args.model is None) == (args.config is None):
        raise SystemExit("predict: give exactly one of --model NAME or --config CONFIG")
    config = load_config(args.config, args.set)
    if args.model:
        model = create_model(args.model, num_classes=args.num_classes, checkpoint=args.checkpoint)
    else:
        model = build_model(config, args.num_classes, checkpoint=args.checkpoint)
    device = _device(args.device)
    model = model.to(device).eval()
    transform = build_test_transform(config)
    palette = make_palette(model.num_classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ev = config.eval
    mode = args.mode or ev.mode
    crop = tuple(args.crop_size) if args.crop_size else ev.crop_size
    stride = tuple(args.stride) if args.stride else ev.stride
    align_corners = bool(getattr(model.decode_head, "align_corners", False))
    for path in _collect_inputs(args.inputs):
        image = read_image(path)  # uint8 (3, H, W)
        with torch.inference_mode():
            probs = predict(model, transform(image)[0][None].to(device), mode=mode, crop_size=crop, stride=stride,
                            flip=args.flip or ev.flip, scales=tuple(args.scales or ev.scales),
                            out_size=tuple(image.shape[-2:]), align_corners=align_corners)
        labels = probs.argmax(1)[0].cpu().numpy()
        save_label_png(out / f"{path.stem}.png", labels, palette)
        save_overlay_png(out / f"{path.stem}_overlay.png", image.permute(1, 2, 0).numpy(), labels, palette)
        print(f"{path} -> {out / (path.stem + '.png')}")
    return 0


# ---------------------------------------------------------------------------------------------------- models / info
def cmd_models(args) -> int:
    from seglab.registry import list_models
    from seglab.tools.flops import format_model_table, model_table

    print(format_model_table(model_table(list_models(), size=(args.size, args.size)), size=args.size))
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
def cmd_convert(args) -> int:
    from seglab.convert import convert_checkpoint
    from seglab.engine.checkpoint import save_weights

    result = convert_checkpoint(args.src, args.source, args.model, img_size=args.img_size)
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
    add_config(p)
    p.add_argument("--resume", action="store_true", help="continue from work_dir/latest.json exactly")
    p.add_argument("--work-dir", help="override train.work_dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--stop-at", type=int, metavar="ITER",
                   help="pause after this iteration (checkpointed); continue later with --resume")
    p.add_argument("--init-from", metavar="CKPT",
                   help="fine-tune: load the tensors of this checkpoint that fit the model, report the others")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the config's validation split")
    add_config(p)
    p.add_argument("--checkpoint", required=True, help="seglab safetensors checkpoint")
    p.add_argument("--split", help="dataset split (default data.val_split)")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--confusion", metavar="PNG", help="draw the row-normalised confusion matrix here")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="segment images; writes label PNGs and colour overlays")
    p.add_argument("--model", help="registered model name")
    p.add_argument("--config", help="YAML run config (model, test transform, inference mode)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=("whole", "slide"))
    p.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--flip", action="store_true")
    p.add_argument("--scales", type=float, nargs="+")
    p.add_argument("--device")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list models with parameters and GFLOPs")
    p.add_argument("--size", type=int, default=512)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="per-stage output shapes, parameters and FLOPs of a model")
    p.add_argument("name")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a foreign checkpoint to a seglab safetensors file")
    p.add_argument("--source", required=True, choices=("hf", "official", "mmseg"))
    p.add_argument("--model", required=True)
    p.add_argument("--img-size", type=int, default=None,
                   help="ViT models (setr_*, segmenter_vit_*, segvit_*): resample an ImageNet ViT's position embedding "
                        "for this crop (e.g. 768, 480; default the model's) and record it as the img_size override")
    p.add_argument("src", help="checkpoint: .safetensors, .pth/.pt/.bin/.ckpt (weights_only), or a JAX ViT .npz")
    p.add_argument("dst")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch, height, width)")
    p.add_argument("--model", required=True)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--checkpoint")
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
    from seglab.config import ConfigError
    from seglab.data.datasets import DatasetError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetError, FileNotFoundError, FileExistsError, KeyError, ValueError) as exc:
        print(f"seglab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
