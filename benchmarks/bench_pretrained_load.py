"""Time to a ready model from published weights by name: seglab against transformers, one process, local server.

The weights are served by the tests' stand-in Hub (`tests/hubserver.py`, 127.0.0.1) in the layout of the real repos
(`nvidia/segformer-b2-finetuned-ade-512-512`, `openmmlab/upernet-swin-tiny`: `pytorch_model.bin` + `config.json`),
random values from the transformers model classes. For each model:

- seglab first load: `seglab.create_model(name, pretrained=TAG)` with empty caches: download, format and hash
  checks, conversion to seglab keys, the cached safetensors written, the model built and loaded;
- seglab cached: the same call again (reads the converted safetensors; no request, no conversion);
- transformers first / cached: `<Model>.from_pretrained(repo)` with its own empty Hugging Face cache, then again.

Each figure is the median of `--runs` (fresh cache directories for every first load); the ratio is seglab's time over
transformers'. Nothing else should run on the machine.

    OMP_NUM_THREADS=2 python benchmarks/bench_pretrained_load.py --runs 3
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hubserver import FakeHub  # noqa: E402


def _segformer_b2():
    import transformers

    config = transformers.SegformerConfig(num_labels=150, hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3],
                                          decoder_hidden_size=768, num_attention_heads=[1, 2, 5, 8])
    return transformers.SegformerForSemanticSegmentation(config), transformers.SegformerForSemanticSegmentation


def _upernet_swin_t():
    import transformers

    backbone = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.UperNetConfig(backbone_config=backbone, num_labels=150)
    return transformers.UperNetForSemanticSegmentation(config), transformers.UperNetForSemanticSegmentation


MODELS = {"segformer_b2": ("ade20k-512", _segformer_b2), "upernet_swin_t": ("ade20k-512", _upernet_swin_t)}


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("models", nargs="*", default=list(MODELS))
    args = parser.parse_args(argv)

    import seglab
    from seglab.hub.table import find_weights

    hub = FakeHub().start()
    os.environ["HF_ENDPOINT"] = hub.url  # before transformers imports huggingface_hub, which reads it once
    import transformers

    transformers.utils.logging.disable_progress_bar()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; server {hub.url}")
    print(f"{'model':<16}{'file MB':>8}  {'seglab first':>12} {'cached':>8}   {'transformers first':>18} "
          f"{'cached':>8}   {'ratio first':>11} {'cached':>7}")
    for name in args.models:
        tag, build = MODELS[name]
        entry = find_weights(name, tag)
        torch.manual_seed(0)
        reference, cls = build()
        buf = io.BytesIO()
        torch.save(reference.state_dict(), buf)
        hub.add_hub_file(entry.hub.repo, entry.hub.file, buf.getvalue())
        hub.add_hub_file(entry.hub.repo, "config.json", reference.config.to_json_string().encode())
        times: dict[str, list[float]] = {"sf": [], "sc": [], "tf": [], "tc": []}
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                os.environ["SEGLAB_HOME"] = f"{tmp}/seglab"
                os.environ["HF_HUB_CACHE"] = f"{tmp}/hf-seglab"
                t, _ = _timed(lambda: seglab.create_model(name, pretrained=tag, progress=False))
                times["sf"].append(t)
                t, _ = _timed(lambda: seglab.create_model(name, pretrained=tag, progress=False))
                times["sc"].append(t)
                cache = f"{tmp}/hf-transformers"
                t, _ = _timed(lambda: cls.from_pretrained(entry.hub.repo, cache_dir=cache))
                times["tf"].append(t)
                t, _ = _timed(lambda: cls.from_pretrained(entry.hub.repo, cache_dir=cache))
                times["tc"].append(t)
        m = {k: statistics.median(v) for k, v in times.items()}
        size = len(buf.getvalue()) / 1e6
        print(f"{name:<16}{size:>8.1f}  {m['sf']:>11.2f}s {m['sc']:>7.2f}s   {m['tf']:>17.2f}s {m['tc']:>7.2f}s   "
              f"{m['sf'] / m['tf']:>10.2f}x {m['sc'] / m['tc']:>6.2f}x")
    hub.stop()


if __name__ == "__main__":
    main()
