"""Shared test setup: deterministic seeds, a small thread count for the 2-core CI machine, and CI's strictness.

Tiers: `make test` runs everything not marked `slow`, `mmseg` or `zoo` (under 10 minutes on 2 cores); `make test-all`
runs the rest but `zoo` (CI runs both); `make test-zoo` exports each family's other published widths and depths.
Every test under `tests/reference/` is marked `reference` (a numeric comparison against a reference implementation:
an installed library, mmsegmentation in its side environment, or a tree written from an official repository).

In CI (`CI=true`), a skipped `reference`, `mmseg` or `onnx` test is a failure: a missing reference library must
not turn the comparisons off unnoticed. The terminal summary counts the reference comparisons that ran, and
appends `passed skipped failed` to the file named by `SEGLAB_REFERENCE_COUNTS` (what `.ci/run` prints).
"""

import os
import random
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a 2-core machine shared with other jobs, spinning
# workers that wait for a descheduled sibling make every parallel region ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

torch.set_num_threads(2)

STRICT_MARKERS = ("reference", "mmseg", "onnx")
_REFERENCE_DIR = Path(__file__).parent / "reference"
_counts = {"passed": 0, "skipped": 0, "failed": 0}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _REFERENCE_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reference)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    strict = [m for m in STRICT_MARKERS if item.get_closest_marker(m) is not None]
    if report.skipped and strict and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"CI=true: a {'/'.join(strict)} test may not be skipped ({reason}); install what it needs "
                           f"(pip install -e '.[test,onnx]')")
    if item.get_closest_marker("reference") is not None:
        if report.when == "call" and report.outcome in ("passed", "failed"):
            _counts[report.outcome] += 1
        elif report.skipped or (report.when == "setup" and report.failed):
            _counts["skipped" if report.skipped else "failed"] += 1


def pytest_collectreport(report):
    # a reference module that skips itself at import (pytest.importorskip at module level) is a failure in CI too
    if report.skipped and in_ci() and _REFERENCE_DIR in Path(str(report.fspath)).parents:
        report.outcome = "failed"


def pytest_terminal_summary(terminalreporter):
    ran = _counts["passed"] + _counts["failed"]
    terminalreporter.write_line(f"seglab: {ran} reference comparisons ran ({_counts['passed']} passed, "
                                f"{_counts['failed']} failed), {_counts['skipped']} skipped")
    path = os.environ.get("SEGLAB_REFERENCE_COUNTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{_counts['passed']} {_counts['skipped']} {_counts['failed']}\n")
