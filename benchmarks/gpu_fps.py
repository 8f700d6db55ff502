"""GPU frames per second of SegFormer-B0..B5 and SegNeXt-T..L next to the published figures: one prepared script
for a machine with a CUDA GPU (nothing in `make test` needs one).

For every model, precision (fp32, fp16 autocast, bf16 autocast) and mode (eager, `torch.compile`): batch-1 FPS
of whole-image inference at 512 x 512 (ADE20K) and of sliding-window inference of a 1024 x 2048 image (Cityscapes:
1024 x 1024 windows, stride 768, `seglab.inference.slide_inference`), after warm-up, with `torch.cuda.synchronize`
around every timed call. The published figures are mmseg's SegFormer README (ADE20K 512, V100: B0-B5 51.3 / 47.7 /
30.9 / 22.1 / 15.5 / 11.9 FPS) and the SegNeXt paper (ADE20K 512, A100: T-L 52.4 / 42.3 / 35.2 / 22.9 FPS); they
include the data pipeline and were measured on other GPUs, so compare the ordering and the ratios between models.

    python benchmarks/gpu_fps.py --json gpu_fps.json            # about 10 minutes on an H100-class GPU
    python benchmarks/gpu_fps.py --device cpu --quick            # a smoke run of the script itself
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

PUBLISHED = {  # model: (FPS, GPU, source) at ADE20K 512
    "segformer_b0": (51.3, "V100", "mmseg SegFormer README"), "segformer_b1": (47.7, "V100", "mmseg SegFormer README"),
    "segformer_b2": (30.9, "V100", "mmseg SegFormer README"), "segformer_b3": (22.1, "V100", "mmseg SegFormer README"),
    "segformer_b4": (15.5, "V100", "mmseg SegFormer README"), "segformer_b5": (11.9, "V100", "mmseg SegFormer README"),
    "segnext_t": (52.4, "A100", "SegNeXt paper"), "segnext_s": (42.3, "A100", "SegNeXt paper"),
    "segnext_b": (35.2, "A100", "SegNeXt paper"), "segnext_l": (22.9, "A100", "SegNeXt paper"),
}
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _fps(fn, device: torch.device, seconds: float, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    sync()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(PUBLISHED))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small inputs, fp32 eager only: checks the script runs")
    parser.add_argument("--json")
    args = parser.parse_args()

    import seglab
    from seglab.inference import slide_inference

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    ade, city, window, stride = ((64, 64), (128, 256), 128, 96) if args.quick else ((512, 512), (1024, 2048), 1024, 768)
    precisions = {"fp32": None} if args.quick else PRECISIONS
    modes = ["eager"] if args.quick or args.no_compile else ["eager", "compile"]
    rows = []
    for name in args.models:
        model = seglab.create_model(name, num_classes=150 if name in PUBLISHED else None).to(device).eval()
        city_model = seglab.create_model(name, num_classes=19).to(device).eval()
        for mode in modes:
            net = torch.compile(model) if mode == "compile" else model
            city_net = torch.compile(city_model, dynamic=False) if mode == "compile" else city_model
            for precision, dtype in precisions.items():
                x = torch.randn(1, 3, *ade, device=device)
                big = torch.randn(1, 3, *city, device=device)

                def whole(net=net, x=x, dtype=dtype):
                    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        return net(x)

                def slide(net=city_net, big=big, dtype=dtype):
                    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        return slide_inference(net, big, window, stride, window_batch=2)

                row = {"model": name, "mode": mode, "precision": precision,
                       "ade512_fps": round(_fps(whole, device, args.seconds, 5), 1),
                       "cityscapes_slide_fps": round(_fps(slide, device, args.seconds, 2), 2)}
                published = PUBLISHED.get(name)
                if published:
                    row["published_fps"], row["published_gpu"], row["published_source"] = published
                rows.append(row)
                print(json.dumps(row), flush=True)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "torch": torch.__version__, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
