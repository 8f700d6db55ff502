"""`seglab predict` on a large image with a 150-class model: streamed slide inference keeps the peak memory of
the process far under the (K, H, W) float32 accumulator of plain slide inference, and writes a tiled TIFF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import seglab
from seglab.checkpoint import save_model
from seglab.engine.bench import run_with_peak_rss


def peak_rss_bytes(args: list[str]) -> tuple[int, str]:
    """Runs `seglab ARGS` in a fresh python; the peak resident memory of that process and its output."""
    code, peak, output = run_with_peak_rss(args)
    assert code == 0 and peak > 0, output
    return peak, output


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc (Linux)")
def test_predict_a_large_image_in_bounded_memory(tmp_path):
    height, width, num_classes = 2400, 3000, 150
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([(xx // 7) % 256, (yy // 5) % 256, ((xx + yy) // 11) % 256], -1).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "big.png")
    torch_model = seglab.create_model("segformer_b0", num_classes=num_classes)
    save_model(tmp_path / "b0.safetensors", torch_model)
    argv = ["predict", "--model", "segformer_b0", "--num-classes",
            str(num_classes), "--checkpoint", str(tmp_path / "b0.safetensors"), "--mode", "slide", "--crop-size",
            "256", "256", "--stride", "192", "192", "--max-pixels", str(height * width), "--tiled",
            "--out", str(tmp_path / "out"), str(tmp_path / "big.png")]
    peak, output = peak_rss_bytes(argv)
    accumulator = num_classes * height * width * 4  # plain slide inference's float32 sum: 4.3 GB
    # the process (python, torch, the model: about 0.9 GiB) plus a carry of at most 255 x 3000 x 150 floats
    assert peak < accumulator / 2, f"peak RSS {peak / 2**30:.2f} GiB\n{output}"
    with Image.open(tmp_path / "out" / "big.tif") as tif:
        assert tif.mode == "P" and tif.size == (width, height)
        labels = np.asarray(tif)
    assert labels.max() < num_classes and len(np.unique(labels)) > 1
    with Image.open(tmp_path / "out" / "big_overlay.png") as overlay:
        assert overlay.height == height  # under the preview limit: full size (plus the legend to the right)
