"""`seglab models / weights / push / info / bench / convert / export`: the model catalogue, published weights,
sharing, shapes and FLOPs, speed, checkpoint conversion and ONNX export.

Torch-free at import: `seglab models` lists the catalogue without loading torch (unless --flops).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from seglab.cli.common import CHECKPOINT_HELP, NUM_CLASSES_HELP


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

    if not args.repo_id and not args.dir:
        raise SystemExit("seglab push: give a Hub REPO_ID (owner/name) to upload to, or --dir DIR to write the folder")
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


def cmd_bench(args) -> int:
    import json

    import torch

    from seglab.engine.bench import bench_model, format_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        from seglab.engine.bench import compare_peer, format_compare

        try:
            result = compare_peer(args.name, size=(args.height, args.width), runs=args.runs,
                                  num_classes=args.num_classes or 150)
        except LookupError as exc:
            raise SystemExit(f"bench --compare: {exc}") from None
        print(format_compare(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.json}")
        return 0
    result = bench_model(args.name, size=(args.height, args.width), runs=args.runs, batch=args.batch,
                         num_classes=args.num_classes)
    print(format_bench(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_info(args) -> int:
    import dataclasses

    from seglab.registry import create_model, get_entry, resolve_options
    from seglab.tools.flops import count_flops, count_params, stage_shapes

    entry = get_entry(args.name)
    model = create_model(args.name, num_classes=args.num_classes).eval()
    size = (args.height, args.width)
    print(f"{args.name} ({entry.task}): {entry.description}")
    print(f"options: {dataclasses.asdict(resolve_options(args.name, {}))}")
    if entry.task != "semantic":  # detections / patch refinement: no single-image logits to trace
        print(f"params: {count_params(model) / 1e6:.3f} M" +
              (f" (paper: {entry.published_params_m:.3f} M)" if entry.published_params_m else ""))
        print(f"stage shapes and FLOPs are reported for semantic models; the task of {args.name} is {entry.task}")
        return 0
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
        from seglab.instance.bpr_dataset import save_bpr
        from seglab.models.bpr import build_bpr

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
    from seglab.registry import create_model, get_entry

    task = get_entry(args.model).task
    if task == "instance":
        raise ValueError(f"the task of {args.model} is {task}; ONNX export covers semantic models (images -> logits) "
                         f"and BPR (image, mask -> logits): a detector's output count depends on the data "
                         f"(see docs/export.md)")
    model = create_model(args.model, num_classes=args.num_classes, checkpoint=args.checkpoint).eval()
    program = (args.format or ("pt2" if args.out.endswith(".pt2") else "onnx")) == "pt2"
    if program:
        from seglab.export.program import check_program, export_program, program_input_ranges

        path = export_program(model, args.out, height=args.height, width=args.width, labels=args.labels)
        ranges = ", ".join(f"{k} {lo}..{hi or ''}" for k, (lo, hi) in program_input_ranges(path).items())
        print(f"wrote {path} (torch.export program; dynamic sizes accepted: {ranges})")
    else:
        path = export_onnx(model, args.out, height=args.height, width=args.width, opset=args.opset,
                           labels=args.labels)
        print(f"wrote {path}")
    if args.check:
        if program:  # larger, not smaller: a program keeps the minimum sizes its tracer assumed; at the traced batch
            # of 2, which every program takes (Swin's keep a `batch != 1` guard)
            diff = check_program(model, path, sizes=[(args.height, args.width), (args.height + 17, args.width + 29)],
                                 batch=2)
        else:
            diff = check_onnx(model, path, sizes=[(args.height, args.width), (args.height // 2 + 3, args.width - 5)])
        what = "pixels with another label" if args.labels else "max abs diff"
        print(f"{'torch.export program' if program else 'onnxruntime'} vs PyTorch {what}: {diff:.2e}")
    return 0


# ---------------------------------------------------------------------------------------------------- parsers
def add_parsers(sub) -> None:
    """`seglab models`, `weights`, `push`, `info`, `convert`, `export`."""
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

    p = sub.add_parser("bench", help="latency, throughput, memory, GFLOP/s and the predict pipeline of a model")
    p.add_argument("name")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--runs", type=int, default=10, help="timed repetitions (after warm-up)")
    p.add_argument("--batch", type=int, default=4, help="batch size of the throughput measurement")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default torch's)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--compare", action="store_true",
                   help="time the same model in a peer library (transformers) with the same weights, interleaved, "
                        "and print the ratio and the output difference")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=cmd_bench)

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

    p = sub.add_parser("export", help="export a model to ONNX or a torch.export program (dynamic batch, height, "
                                      "width)")
    p.add_argument("--model", required=True)
    p.add_argument("--num-classes", type=int, help=NUM_CLASSES_HELP)
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--out", required=True)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--format", choices=("onnx", "pt2"),
                   help="onnx (default) or pt2, a torch.export program; default from the --out suffix")
    p.add_argument("--check", action="store_true",
                   help="compare the exported file (onnxruntime / the loaded program) with PyTorch at two sizes")
    p.add_argument("--labels", action="store_true",
                   help="put the resize to the input size and the argmax in the graph: int32 labels (B, H, W) out")
    p.set_defaults(func=cmd_export)
