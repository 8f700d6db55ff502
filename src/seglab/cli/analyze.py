"""`seglab analyze erf | resolution | corruptions | errors`: the papers' analyses on any registered model.

Each command takes one or more models (run configs, or registered model names for `erf`) with one checkpoint
each, and writes into `--out`: the figures (PNG), the numbers (`results.json`; `.npy` arrays for the ERF) and a
self-contained `report.html` with the figures embedded, the tables, the run configs and the checkpoints' digests.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from seglab.cli.common import choose_device, class_info, collect_inputs

COMMANDS = ("erf", "resolution", "corruptions", "errors")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"analyze: expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    values = _floats(text)
    if any(v != int(v) for v in values):
        raise SystemExit(f"analyze: expected comma-separated integers, got {text!r}")
    return [int(v) for v in values]


def _subjects(args, require_checkpoints: bool):
    """The models of the command line, each with its checkpoint (one per model, in order)."""
    from seglab.analyze.subject import load_subject

    checkpoints = args.checkpoint or []
    if len(checkpoints) != len(args.models) and (checkpoints or require_checkpoints):
        optional = "" if require_checkpoints else ", or none for the random initialisation"
        raise SystemExit(f"analyze {args.command_name}: {len(checkpoints)} checkpoint(s) for {len(args.models)} "
                         f"model(s): give one --checkpoint per model{optional}")
    device = choose_device(args.device)
    subjects = []
    for i, name in enumerate(args.models):
        checkpoint = checkpoints[i] if checkpoints and checkpoints[i] != "none" else None
        subjects.append(load_subject(name, checkpoint, args.set, device=device))
    seen: set[str] = set()
    for i, s in enumerate(subjects):  # a label given twice (two checkpoints of one config) gets its position
        if s.label in seen:
            s.label = f"{s.label}#{i + 1}"
        seen.add(s.label)
    return subjects


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, disable=not enabled, file=sys.stderr)


def _command_line(args) -> str:
    return "seglab " + shlex.join(args.argv)


# ---------------------------------------------------------------------------------------------------- erf
def _erf_images(subject, args, images: str | None):
    """Batches of normalised images at the ERF size (`images`: a folder, "noise", or None for the validation
    split), and what they are."""
    import torch

    from seglab.data.datasets import read_image
    from seglab.data.transforms import normalize, resize_image

    size = tuple(args.size) if args.size else subject.input_size()
    data = subject.config.data
    count = args.num_images
    if images == "noise":
        generator = torch.Generator().manual_seed(args.seed)
        pictures = [torch.randint(0, 256, (3, *size), generator=generator, dtype=torch.uint8) for _ in range(count)]
        source = f"{count} uniform-noise images"
    elif images:
        files, _ = collect_inputs([images])
        if not files:
            raise SystemExit(f"analyze erf: no images in {images}")
        pictures = [read_image(f) for f in files[:count]]
        source = f"{len(pictures)} images of {images}"
    else:
        dataset = subject.dataset(limit=count)
        pictures = [dataset[i]["image"] for i in range(len(dataset))]
        source = f"{len(pictures)} images of the validation split ({subject.config.data.root})"
    batches = []
    for start in range(0, len(pictures), args.batch_size):
        chunk = [resize_image(p, size) for p in pictures[start:start + args.batch_size]]
        batches.append(normalize(torch.stack(chunk), data.mean, data.std).to(subject.device))
    return batches, f"{source}, resized to {size[0]}x{size[1]}"


def cmd_erf(args) -> int:
    import numpy as np

    from seglab.analyze.erf import effective_receptive_fields, model_outputs, plot_erf_rows
    from seglab.analyze.report import Report, markdown_table, write_json

    out = Path(args.out)
    subjects = _subjects(args, require_checkpoints=False)
    rows, results, sources = {}, {}, {}
    bar = _progress(len(subjects), "erf", not args.no_progress)
    for given, subject in zip(args.models, subjects, strict=True):
        # a model name brings no dataset: noise images unless --images says otherwise (the report names them)
        images = args.images or (None if Path(given).suffix in (".yaml", ".yml") else "noise")
        batches, sources[subject.label] = _erf_images(subject, args, images)
        fields = effective_receptive_fields(model_outputs(subject.model), batches)
        rows[subject.label] = fields
        results[subject.label] = {
            name: {"stride": f.stride, "centre": list(f.centre), "size": list(f.grad.shape),
                   **{f"r{int(s * 100)}": f.radius[s] for s in sorted(f.radius)}} for name, f in fields.items()}
        for name, f in fields.items():
            out.mkdir(parents=True, exist_ok=True)
            np.save(out / f"erf_{subject.label}_{name}.npy", f.grad.astype(np.float32))
        bar.update()
    bar.close()
    figure = plot_erf_rows(rows, out / "erf.png")
    header = ["model", "output", "stride", "r50 (px)", "r90 (px)", "input"]
    table = [(label, name, f"/{r['stride']:g}", r["r50"], r["r90"], "x".join(map(str, r["size"])))
             for label, fields in results.items() for name, r in fields.items()]
    write_json(out / "results.json", {"erf": results, "images": sources})
    report = Report("Effective receptive fields", _command_line(args))
    report.text("Absolute gradient of each output's centre location (summed over its channels) with respect to the "
                "input pixels, averaged over the input channels and the images (Luo et al. 2016, SegFormer Fig. 3). "
                "Shown as log10(1 + g / mean g), each map scaled to its maximum; circles: the radii holding 50 % "
                "(solid) and 90 % (dashed) of the gradient mass.")
    report.figure(figure)
    report.table(header, table, digits=1)
    report.table(["model", "images"], list(sources.items()))
    report.provenance(subjects)
    report.write(out / "report.html")
    print(markdown_table(header, table, digits=1))
    print(f"wrote erf.png, erf_*.npy, results.json and report.html to {out}")
    return 0


# ---------------------------------------------------------------------------------------------------- resolution
def cmd_resolution(args) -> int:
    from seglab.analyze.report import Report, markdown_table, write_json
    from seglab.analyze.resolution import plot_resolution, resolution_sweep, slide_geometry

    out = Path(args.out)
    scales, modes = _floats(args.sizes), [m.strip() for m in args.modes.split(",") if m.strip()]
    subjects = _subjects(args, require_checkpoints=True)
    bar = _progress(len(subjects) * len(scales) * len(modes), "resolution", not args.no_progress)
    results = {}
    for subject in subjects:
        dataset = subject.dataset(args.split, args.limit)
        results[subject.label] = resolution_sweep(subject, dataset, scales, modes, on_step=bar.update)
    bar.close()
    figure = plot_resolution(results, out / "resolution.png")
    header = ["model", "mode", *[f"x{s:g}" for s in scales]]
    table = [(label, mode, *[100 * r["mIoU"] for s in scales for r in records if r["mode"] == mode and r["scale"] == s])
             for label, records in results.items() for mode in modes]
    geometry = [(s.label, "x".join(map(str, s.input_size())), "x".join(map(str, slide_geometry(s)[0])),
                 "x".join(map(str, slide_geometry(s)[1]))) for s in subjects]
    write_json(out / "results.json", {"resolution": results, "scales": scales, "modes": modes})
    report = Report("mIoU against the test resolution", _command_line(args))
    report.text("Each scale multiplies the image as the config's test transform gives it; the prediction is resized "
                "back to the label map, so every scale is scored on the same pixels. mIoU in %.")
    report.figure(figure)
    report.table(header, table, digits=2)
    report.table(["model", "training crop", "slide window", "slide stride"], geometry)
    report.provenance(subjects)
    report.write(out / "report.html")
    print(markdown_table(header, table))
    print(f"wrote resolution.png, results.json and report.html to {out}")
    return 0


# ---------------------------------------------------------------------------------------------------- corruptions
def cmd_corruptions(args) -> int:
    from seglab.analyze.corruptions import CITYSCAPES_C, CORRUPTIONS, check_corruptions
    from seglab.analyze.report import Report, markdown_table, write_json
    from seglab.analyze.robustness import corruption_sweep, plot_corruption_examples, plot_corruption_heatmap
    from seglab.analyze.subject import image_array

    out = Path(args.out)
    if args.corruptions == "all":
        names = [n for n in CORRUPTIONS if n != "frost" or args.frost_dir or _has_frost()]
    elif args.corruptions == "cityscapes-c":
        names = [n for n in CITYSCAPES_C if n != "frost" or args.frost_dir or _has_frost()]
    else:
        names = [n.strip() for n in args.corruptions.split(",") if n.strip()]
    check_corruptions(names, args.frost_dir)
    severities = _ints(args.severities)
    subjects = _subjects(args, require_checkpoints=True)
    bar = _progress(len(subjects) * (1 + len(names) * len(severities)), "corruptions", not args.no_progress)
    results = {}
    for subject in subjects:
        dataset = subject.dataset(args.split, args.limit)
        results[subject.label] = corruption_sweep(subject, dataset, names, severities, args.seed, args.frost_dir,
                                                  on_step=bar.update)
    bar.close()
    heatmap = plot_corruption_heatmap(results, out / "corruptions.png")
    examples = plot_corruption_examples(image_array(subjects[0].dataset(args.split, 1)[0]["image"]), names,
                                        out / "examples.png", args.seed, args.frost_dir)
    header = ["model", "clean", "mean corrupted", "relative (%)", *names]
    table = [(label, 100 * r["clean"], 100 * r["mean"], 100 * r["relative"],
              *[100 * sum(r["mIoU"][n]) / len(r["mIoU"][n]) for n in names]) for label, r in results.items()]
    write_json(out / "results.json", {"corruptions": results, "names": names})
    report = Report("Robustness to natural corruptions", _command_line(args))
    report.text(f"The validation split corrupted on the fly ({len(names)} corruptions x severities "
                f"{', '.join(map(str, severities))}; ImageNet-C definitions, seed {args.seed}); mIoU in %. Per "
                "corruption: the mean over the severities; relative: mean corrupted / clean, in %.")
    report.figure(heatmap, "mIoU per corruption and severity")
    report.table(header, table, digits=1)
    report.figure(examples, "one validation image under each corruption (severities 1, 3, 5)")
    report.provenance(subjects)
    report.write(out / "report.html")
    print(markdown_table(header[:4], [row[:4] for row in table], digits=1))
    print(f"wrote corruptions.png, examples.png, results.json and report.html to {out}")
    return 0


def _has_frost() -> bool:
    from seglab.analyze.corruptions import CorruptionError, check_corruptions

    try:
        check_corruptions(["frost"])
    except CorruptionError:
        print("analyze corruptions: frost left out (pip install imagecorruptions, or --frost-dir, gives its "
              "textures)", file=sys.stderr)
        return False
    return True


# ---------------------------------------------------------------------------------------------------- errors
def cmd_errors(args) -> int:
    from seglab.analyze.errors import error_analysis, plot_class_iou, plot_trimap, plot_worst
    from seglab.analyze.report import Report, markdown_table, write_json
    from seglab.tools.visualize import plot_confusion_matrix

    out = Path(args.out)
    widths = _ints(args.widths)
    subjects = _subjects(args, require_checkpoints=True)
    analyses, names = {}, None
    report = Report("Where the models err", _command_line(args))
    for subject in subjects:
        dataset = subject.dataset(args.split, args.limit)
        classes, palette = class_info(dataset, subject.model.num_classes)
        names = names or classes
        bar = _progress(len(dataset), f"errors {subject.label}", not args.no_progress)
        analysis = error_analysis(subject, dataset, args.worst, widths, on_batch=bar.update)
        bar.close()
        analyses[subject.label] = analysis
        ignore = subject.config.data.ignore_index
        plot_confusion_matrix(analysis.confusion, classes, out / f"{subject.label}_confusion.png",
                              title=f"{subject.label}: confusion, rows normalised")
        if analysis.worst:
            plot_worst(analysis.worst, palette, out / f"{subject.label}_worst.png", ignore)
    class_png = plot_class_iou({k: a.metrics["IoU"] for k, a in analyses.items()}, names, out / "class_iou.png")
    trimap_png = plot_trimap({k: a.trimap for k, a in analyses.items()}, out / "trimap.png")
    summary_header = ["model", "mIoU", "aAcc", *[f"band {d}px acc" for d in widths],
                      *[f"interior {d}px acc" for d in widths]]
    summary = [(k, 100 * a.metrics["mIoU"], 100 * a.metrics["aAcc"], *[100 * a.trimap[d]["band_acc"] for d in widths],
                *[100 * a.trimap[d]["interior_acc"] for d in widths]) for k, a in analyses.items()]
    class_header = ["model", *names]
    class_rows = [(k, *[100 * v for v in a.metrics["IoU"]]) for k, a in analyses.items()]
    write_json(out / "results.json", {k: {"metrics": a.metrics, "confusion": a.confusion.tolist(),
                                          "trimap": {str(d): v for d, v in a.trimap.items()},
                                          "worst": [{"path": w["path"], "mIoU": w["mIoU"]} for w in a.worst]}
                                      for k, a in analyses.items()})
    report.text("Validation split with each config's inference settings; numbers in %. The boundary band of width d "
                "holds the labelled pixels within d px of a ground-truth label change; the interior, the others.")
    report.table(summary_header, summary, digits=2)
    report.figure(trimap_png, "pixel accuracy in the boundary band and the interior")
    report.figure(class_png, "per-class IoU")
    report.table(class_header, class_rows, digits=1)
    for k, a in analyses.items():
        report.heading(k)
        report.figure(out / f"{k}_confusion.png", "confusion matrix, rows normalised")
        if a.worst:
            report.figure(out / f"{k}_worst.png", f"the {len(a.worst)} images of lowest mIoU")
    report.provenance(subjects)
    report.write(out / "report.html")
    print(markdown_table(summary_header, summary))
    print(f"wrote confusion, class IoU, trimap and worst-image figures, results.json and report.html to {out}")
    return 0


# ---------------------------------------------------------------------------------------------------- parsers
def _common(p, command: str, models_help: str) -> None:
    p.add_argument("models", nargs="+", help=models_help)
    p.add_argument("--checkpoint", nargs="+", metavar="W", help="one weights file per model, in order")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of every model's run config (repeatable)")
    p.add_argument("--out", default=f"work_dirs/analysis/{command}", help="output folder")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(command_name=command)


def _evaluated(p) -> None:
    p.add_argument("--split", help="dataset split (default data.val_split)")
    p.add_argument("--limit", type=int, metavar="N", help="the first N images of the split only")


def add_parsers(sub) -> None:
    """`seglab analyze erf | resolution | corruptions | errors`."""
    analyze = sub.add_parser("analyze", help="the papers' analyses: effective receptive fields, resolution and "
                                             "corruption robustness, error plots")
    commands = analyze.add_subparsers(dest="analysis", required=True)

    p = commands.add_parser("erf", help="effective receptive field of each backbone stage and of the head")
    _common(p, "erf", "run configs (.yaml) or registered model names")
    p.add_argument("--images", help="a folder of images, or 'noise' (default: the config's validation split; "
                                    "noise for a model name)")
    p.add_argument("--num-images", type=int, default=16, help="images averaged (default 16)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="input size (default: the training crop)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="seed of the noise images")
    p.set_defaults(func=cmd_erf)

    p = commands.add_parser("resolution", help="mIoU at test scales around the training size, whole and slide")
    _common(p, "resolution", "run configs (.yaml)")
    _evaluated(p)
    p.add_argument("--sizes", default="0.5,0.75,1,1.25,1.5,2", help="test scales, comma-separated")
    p.add_argument("--modes", default="whole,slide", help="inference modes, comma-separated")
    p.set_defaults(func=cmd_resolution)

    p = commands.add_parser("corruptions", help="mIoU under ImageNet-C corruptions at five severities")
    _common(p, "corruptions", "run configs (.yaml)")
    _evaluated(p)
    p.add_argument("--corruptions", default="all",
                   help="'all' (18 with frost), 'cityscapes-c' (SegFormer Table 6 but spatter), or a comma list")
    p.add_argument("--severities", default="1,2,3,4,5")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions' random draws")
    p.add_argument("--frost-dir", help="folder with ImageNet-C's frost1.png ... frost6.jpg (default: an installed "
                                       "imagecorruptions package's)")
    p.set_defaults(func=cmd_corruptions)

    p = commands.add_parser("errors", help="confusion matrix, per-class IoU, worst images, boundary vs interior")
    _common(p, "errors", "run configs (.yaml)")
    _evaluated(p)
    p.add_argument("--worst", type=int, default=8, help="worst images drawn (default 8)")
    p.add_argument("--widths", default="3,5,10", help="boundary band widths in px, comma-separated")
    p.set_defaults(func=cmd_errors)
