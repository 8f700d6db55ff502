"""The bounded load test of `seglab serve` (benchmarks/bench_serve.py, the same script that writes docs/serve.md's
table): 200 requests at each of concurrency 1, 4 and 16 against `seglab serve` in its own process, bounded in time;
every request must succeed and the server's memory must stay flat. Latency and throughput are printed, never
asserted (timings live in benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="seglab serve needs the serve extra: pip install 'seglab[serve]'")
pytest.importorskip("httpx", reason="the load test's client is httpx")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_serve.py"


def test_load_without_failures_and_with_flat_memory(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--requests", "200", "--levels", "1,4,16", "--max-seconds",
                           "120", "--json", str(out)], capture_output=True, text=True, timeout=900, check=False)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    for level in result["levels"]:
        assert level["failed"] == 0 and level["ok"] == 200, level
        assert level["rss_after_mib"] - level["rss_before_mib"] < 100, level  # flat: no growth with load
    assert result["server"]["largest_batch"] > 1  # concurrent requests shared forward passes
