"""`seglab bench` measures and reports; what it must get right is the bookkeeping (timings are for benchmarks, never
asserted): every figure present and positive, the JSON written, the percentile arithmetic, non-semantic models refused
with the reason."""

from __future__ import annotations

import json

import pytest

from seglab.cli.main import main
from seglab.engine.bench import bench_model, percentile


def test_percentile_interpolates_between_sorted_values():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 90) == pytest.approx(3.7)
    assert percentile([5.0], 90) == 5.0


def test_bench_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "segformer_b0", "--height", "64", "--width", "96", "--runs", "2", "--batch", "2",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "segformer_b0" and result["size"] == [64, 96]
    assert 0 < result["latency_ms"]["median"] <= result["latency_ms"]["p90"] * 1.0000001
    for value in (result["throughput_ips"], result["peak_rss_mb"], result["gmacs"], result["achieved_gflops"],
                  result["matmul_ceiling_gflops"], *result["pipeline_ms"].values()):
        assert value > 0
    assert set(result["pipeline_ms"]) == {"decode", "preprocess", "model", "postprocess"}
    assert "GFLOP/s achieved" in capsys.readouterr().out


def test_bench_refuses_detection_models():
    with pytest.raises(ValueError, match="task of mask_rcnn_r50_fpn is instance"):
        bench_model("mask_rcnn_r50_fpn", size=(64, 64), runs=1)


def test_compare_against_transformers_with_the_same_weights(tmp_path, capsys):
    """`--compare` loads the peer's random weights into seglab's model through seglab's converter: the outputs agree
    (SegFormer-B0 against transformers), and both timings and their ratio are reported."""
    pytest.importorskip("transformers")
    out = tmp_path / "compare.json"
    assert main(["bench", "segformer_b0", "--compare", "--height", "64", "--width", "96", "--runs", "2",
                 "--num-classes", "7", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["peer"] == "transformers" and result["size"] == [64, 96]
    assert result["max_abs_diff"] < 1e-4 < result["peer_output_max"]
    assert result["seglab_ms"]["median"] > 0 and result["peer_ms"]["median"] > 0
    assert result["ratio"] == pytest.approx(result["seglab_ms"]["median"] / result["peer_ms"]["median"])
    assert "ratio" in capsys.readouterr().out


def test_compare_names_the_families_with_a_peer():
    with pytest.raises(SystemExit, match=r"no peer implementation of segnext_t.*segformer_b\[0-5\]"):
        main(["bench", "segnext_t", "--compare"])
