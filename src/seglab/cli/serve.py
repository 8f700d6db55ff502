"""`seglab serve`: a web page and an HTTP API over one or more models.

Models are given in order, each as `--model NAME` followed by its `--checkpoint W` or `--pretrained TAG`, or as
`--run DIR` (a `seglab train` run directory: its config.yaml and best checkpoint). The server binds to 127.0.0.1
unless `--host` says otherwise; `--token` (or SEGLAB_TOKEN) guards the page and the API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from seglab.cli.common import choose_device


class _Ordered(argparse.Action):
    """Keeps --model / --checkpoint / --pretrained / --run in the order given, to pair them."""

    def __call__(self, parser, namespace, values, option_string=None):
        specs = getattr(namespace, "specs", None) or []
        specs.append((self.dest, values))
        namespace.specs = specs


def model_specs(specs: list[tuple[str, str]]) -> list[dict]:
    """[(kind, value)] in command-line order -> [{"model", "checkpoint" | "pretrained"} | {"run"}]."""
    out: list[dict] = []
    for kind, value in specs:
        if kind in ("model", "run"):
            out.append({kind: value})
        elif not out or "model" not in out[-1] or len(out[-1]) > 1:
            raise SystemExit(f"serve: --{kind} {value} must follow the --model it belongs to")
        else:
            out[-1][kind] = value
    for spec in out:
        if "model" in spec and len(spec) == 1:
            raise SystemExit(f"serve: --model {spec['model']} needs its --checkpoint FILE or --pretrained TAG")
    if not out:
        raise SystemExit("serve: give a model: --model NAME --checkpoint FILE, --model NAME --pretrained TAG, or "
                         "--run DIR")
    return out


def _run_checkpoint(run: Path) -> Path:
    if (run / "best.safetensors").is_file():
        return run / "best.safetensors"
    latest = run / "latest.json"
    if latest.is_file():
        return run / json.loads(latest.read_text())["weights"]
    raise SystemExit(f"serve: {run} holds no best.safetensors or latest.json: is it a `seglab train` run directory?")


def _check_semantic(task: str, name: str) -> None:
    if task != "semantic":
        raise SystemExit(f"serve: {name} is a model of the {task!r} task; seglab serve serves semantic "
                         f"segmentation models")


def load_served(spec: dict, device, crop_size, stride):
    """A `ServedModel` for one spec: the model, its classes and palette, and its test pipeline."""
    from seglab.hub.predictor import Predictor
    from seglab.registry import get_entry
    from seglab.serve.app import ServedModel

    if "run" in spec:
        from seglab.cli.semantic import prediction_classes
        from seglab.config import load_config, test_pipeline
        from seglab.engine.run import build_model

        run = Path(spec["run"])
        if not (run / "config.yaml").is_file():
            raise SystemExit(f"serve: {run}/config.yaml not found: --run takes a `seglab train` run directory")
        config = load_config(run / "config.yaml")
        _check_semantic(get_entry(config.model.name).task, config.model.name)
        checkpoint = _run_checkpoint(run)
        model = build_model(config, None, checkpoint=str(checkpoint))
        classes, palette = prediction_classes(config, True, str(checkpoint), model.num_classes)
        model.seglab_meta = {**test_pipeline(config), "classes": list(classes), "palette": [list(c) for c in palette]}
        predictor = Predictor(model, device=device)
        name, description = run.name, f"{config.model.name} from {checkpoint}"
        default_crop = tuple(config.data.train_transform.crop_size)
    else:
        name = spec["model"]
        _check_semantic(get_entry(name).task, name)
        if "checkpoint" in spec:
            predictor = Predictor(name, checkpoint=spec["checkpoint"], device=device)
            description = f"{name} from {spec['checkpoint']}"
        else:
            predictor = Predictor(name, pretrained=spec["pretrained"], device=device)
            description = f"{name}, published weights {spec['pretrained']}"
        default_crop = (512, 512)
    if crop_size or not predictor.crop_size:  # slide on request: the given or the trained window
        predictor.crop_size = tuple(crop_size or default_crop)
        predictor.stride = tuple(stride or [max(1, 2 * c // 3) for c in predictor.crop_size])
    return ServedModel(name, predictor, description)


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from seglab.serve.app import ServeOptions, create_app
    except ImportError as exc:
        print(f"seglab serve: {exc.name} is not installed: pip install 'seglab[serve]'", file=sys.stderr)
        return 1
    device = choose_device(args.device)
    served = [load_served(spec, device, args.crop_size, args.stride) for spec in model_specs(args.specs or [])]
    seen: set[str] = set()
    for i, m in enumerate(served):
        if m.name in seen:
            m.name = f"{m.name}-{i + 1}"
        seen.add(m.name)
    token = args.token or os.environ.get("SEGLAB_TOKEN") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"seglab serve: warning: listening on {args.host} without a token: anyone who reaches this port can "
              f"use the models (--token or SEGLAB_TOKEN)", file=sys.stderr)
    options = ServeOptions(token=token, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
                           max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                           timeout=args.timeout)
    app = create_app(served, options)
    print(f"seglab serve: {', '.join(m.name for m in served)} on http://{args.host}:{args.port}/ (API: /v1/predict, "
          f"/v1/models, /healthz; docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="a web page and an HTTP API (POST /v1/predict) over one or more models")
    p.add_argument("--model", action=_Ordered, metavar="NAME", help="a registered model (repeatable: several side "
                                                                     "by side), followed by its weights")
    p.add_argument("--checkpoint", action=_Ordered, metavar="FILE", help="the weights of the --model before it")
    p.add_argument("--pretrained", action=_Ordered, metavar="TAG",
                   help="published weights of the --model before it (`seglab weights NAME`)")
    p.add_argument("--run", action=_Ordered, metavar="DIR", help="a `seglab train` run directory (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require this token (Authorization: Bearer TOKEN; the page: /?token=TOKEN); "
                                   "default: the SEGLAB_TOKEN environment variable, else none")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"),
                   help="slide window (default: the model's test pipeline, else the run's training crop, else 512)")
    p.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="slide stride (default 2/3 of the window)")
    p.add_argument("--max-bytes", type=int, default=20 * 2**20, help="largest upload in bytes (default 20 MiB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height (default 40 M)")
    p.add_argument("--max-batch", type=int, default=8, help="requests per forward pass at most (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a request waits for others to batch with (default 10 ms)")
    p.add_argument("--queue-size", type=int, default=64, help="waiting requests per model before 503 (default 64)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take before 504 (default 60)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve, specs=None)
