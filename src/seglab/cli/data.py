"""`seglab data shapes | shapes-instances | check | convert`: dataset tools."""

from __future__ import annotations

import time


def cmd_data_shapes(args) -> int:
    from seglab.data.synthetic import generate_shapes

    start = time.perf_counter()
    root = generate_shapes(args.out, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=args.seed)
    print(f"wrote {args.n_train} train + {args.n_val} val images to {root} in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_data_shapes_instances(args) -> int:
    from seglab.data.synthetic_instances import generate_shapes_instances

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
    if args.kind == "cityscapes-instances":
        path = converters.cityscapes_to_coco(args.root, args.split, args.out)
        print(f"{args.kind}: wrote {path} in {time.perf_counter() - start:.1f}s")
        return 0
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


# ---------------------------------------------------------------------------------------------------- parsers
def add_parsers(sub) -> None:
    """`seglab data` and its subcommands."""
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
    c = kinds.add_parser("cityscapes-instances",
                         help="gtFine *_instanceIds.png of one split -> a COCO instances JSON (8 thing classes)")
    c.add_argument("root", help="Cityscapes root (leftImg8bit/, gtFine/)")
    c.add_argument("--split", default="train", help="train, val or test (default train)")
    c.add_argument("--out", required=True, help="the COCO JSON to write")
    q.set_defaults(func=cmd_data_convert)
