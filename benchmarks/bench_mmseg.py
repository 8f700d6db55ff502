"""seglab against mmsegmentation 1.2.2 with the same weights, in one process, interleaved: latency ratio and output
difference per family.

mmseg 1.2.2 does not install next to this torch; the tests keep it in a side environment (`.cache/mmseg-env`, built
by `tests/reference/mmseg_env.py` on first use) that sees the main environment's packages. This script re-runs
itself with that interpreter, adds `src/` to the path, and for each model: builds mmseg's segmentor from mmseg's
own config (SyncBN as BN, random weights via `tests/testkit.randomize_`, BN statistics calibrated for HRNet), converts
its state dict with `seglab.convert_checkpoint(..., "mmseg", ...)`, loads it strictly into seglab's model, checks the
logits agree, and times `decode_head(extract_feat(x))` (mmseg's `_forward`) against seglab's `model(x)`, batch 1,
interleaved (seglab, mmseg, seglab, ...). SegNeXt runs both with the original's random NMF bases from the same
seeded generator (`ham_eval_bases="random"`), so the outputs compare. Nothing else should run on the machine.

    python benchmarks/bench_mmseg.py --size 512 --runs 10 [--json out.json] [MODEL ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {  # seglab model: (mmseg config, seglab overrides, calibrate BN, seed before each forward)
    "segformer_b0": ("segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py", {}, False, None),
    "segnext_t": ("segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py", {"ham_eval_bases": "random"}, False,
                  123),
    "fcn_hrnetv2_w18s": ("hrnet/fcn_hr18s_4xb4-160k_ade20k-512x512.py", {}, True, None),
    "upernet_swin_t": ("swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py", {}, False, None),
    "setr_naive_vit_l": ("setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py", {}, False, None),
    "setr_pup_vit_l": ("setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py", {}, False, None),
    "segmenter_vit_t": ("segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py", {}, False, None),
    "segmenter_vit_b": ("segmenter/segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py", {}, False, None),
}


def _side_python() -> Path:
    sys.path[:0] = [str(ROOT / "tests" / "reference"), str(ROOT / "tests")]
    from mmseg_env import mmseg_python

    python, reason = mmseg_python()
    if python is None:
        raise SystemExit(f"no mmsegmentation side environment: {reason}")
    return python


def _build_mmseg(config: str, calibrate: bool):
    import mmseg
    import torch
    from mmengine.config import Config, ConfigDict
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg_runner import _calibrate_batchnorm, _randomize, _sync_bn_to_bn

    cfg = Config.fromfile(str(Path(mmseg.__file__).parent / ".mim" / "configs" / config))
    init_default_scope("mmseg")
    model_cfg = ConfigDict(_sync_bn_to_bn(cfg.model.to_dict()))
    model_cfg.pop("data_preprocessor", None)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    _randomize(model, 0)
    if calibrate:
        _calibrate_batchnorm(model, lambda x: model.decode_head.forward(model.extract_feat(x)), [1, 3, 256, 256], 0)
    return model.eval()


def _time_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"default: all of {', '.join(CASES)}")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    try:
        import mmseg
    except ImportError:
        python = _side_python()
        os.execv(str(python), [str(python), __file__, *sys.argv[1:]])
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "reference"), str(ROOT / "tests")]
    import warnings

    warnings.filterwarnings("ignore")
    import mmseg
    import torch

    import seglab
    from seglab.convert import convert_checkpoint
    from seglab.convert.setr import convert_setr_mmseg

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models or list(CASES):
        config, overrides, calibrate, forward_seed = CASES[name]
        theirs = _build_mmseg(config, calibrate)
        state = theirs.state_dict()
        if name.startswith("setr_"):
            result = convert_setr_mmseg(state, name)
        else:
            result = convert_checkpoint(state, "mmseg", name)
        ours = seglab.create_model(name, num_classes=result.num_classes, **{**result.overrides, **overrides}).eval()
        ours.load_state_dict(result.state_dict, strict=True)
        x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))

        def run_ours(model=ours, seed=forward_seed, x=x):
            if seed is not None:
                torch.manual_seed(seed)
            return model(x)

        def run_theirs(model=theirs, seed=forward_seed, x=x):
            if seed is not None:
                torch.manual_seed(seed)
            return model.decode_head.forward(model.extract_feat(x))

        with torch.inference_mode():
            diff = float((run_ours() - run_theirs()).abs().max())
            scale = float(run_theirs().abs().max())
            for _ in range(2):
                run_ours(), run_theirs()
            times = {"seglab": [], "mmseg": []}
            for _ in range(args.runs):
                times["seglab"].append(_time_ms(run_ours))
                times["mmseg"].append(_time_ms(run_theirs))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"model": name, "size": args.size, "seglab_ms": round(med["seglab"], 1),
               "mmseg_ms": round(med["mmseg"], 1), "ratio": round(med["seglab"] / med["mmseg"], 2),
               "max_abs_diff": diff, "mmseg_output_max": scale}
        rows.append(row)
        print(f"{name:20s} {args.size}px seglab {row['seglab_ms']:8.1f} ms  mmseg {row['mmseg_ms']:8.1f} ms  "
              f"ratio {row['ratio']:.2f}  max diff {diff:.1e} (outputs up to {scale:.2g})", flush=True)
        del ours, theirs
    info = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus", "threads": args.threads,
            "torch": torch.__version__, "mmseg": mmseg.__version__, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
