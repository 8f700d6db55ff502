"""The model catalogue: every registered model's name, description and parameter counts, as data.

`seglab models` answers from `catalog.json` without importing torch or building a model (importing torch alone
takes longer than a listing should). The file is written from the registry by `python -m seglab.catalog`, and
`tests/unit/test_catalog.py` checks it against the registry (names, descriptions, parameters counted on the meta
device), so it cannot fall behind the models.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CATALOG_PATH = Path(__file__).with_name("catalog.json")


def load_catalog() -> list[dict[str, Any]]:
    """Rows `{name, task, description, params, published_params_m}`, sorted by name."""
    return json.loads(CATALOG_PATH.read_text())["models"]


def select(rows: list[dict[str, Any]], pattern: str) -> list[dict[str, Any]]:
    """The rows whose name matches `pattern`: a shell pattern (`upernet_*_t`) or else a part of the name."""
    glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    chosen = [row for row in rows if fnmatch.fnmatch(row["name"], glob)]
    if not chosen:
        close = difflib.get_close_matches(pattern, [row["name"] for row in rows], n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "`seglab models` lists them all"
        raise ValueError(f"no model matches {pattern}; {hint}")
    return chosen


def catalog_from_registry() -> list[dict[str, Any]]:
    """The catalogue rows as the registry builds them now (models on the meta device: no memory, no init)."""
    import torch

    from seglab.registry import create_model, get_entry, list_models

    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        entry = get_entry(name)
        rows.append({"name": name, "task": entry.task, "description": entry.description,
                     "params": sum(p.numel() for p in model.parameters()),
                     "published_params_m": entry.published_params_m})
    return rows


def write_catalog(path: Path = CATALOG_PATH) -> Path:
    rows = catalog_from_registry()
    path.write_text(json.dumps({"generated_by": "python -m seglab.catalog", "models": rows}, indent=1) + "\n")
    return path


def format_model_table(rows: Sequence[dict[str, Any]], size: int | Sequence[int] = (512, 512)) -> str:
    """Rows (`params` or `params_m`, and `gflops` when counted) as aligned text: GFLOPs at `size` when the rows
    have them, else each model's description."""
    height, width = (size, size) if isinstance(size, int) else size
    with_flops = any(row.get("gflops") is not None for row in rows)
    header = f"{'model':<24} {'task':<9} {'params (M)':>10} {'paper (M)':>10}"
    header += f" {f'GFLOPs @{height}x{width}':>18}" if with_flops else "  description"
    lines = [header, "-" * len(header)]
    for row in rows:
        params_m = row["params_m"] if "params_m" in row else row["params"] / 1e6
        published = f"{row['published_params_m']:.1f}" if row["published_params_m"] is not None else "-"
        line = f"{row['name']:<24} {row.get('task', 'semantic'):<9} {params_m:>10.2f} {published:>10}"
        if with_flops:
            line += f" {row['gflops']:>18.2f}" if row.get("gflops") is not None else f" {'-':>18}"
        else:
            line += f"  {row['description']}"
        lines.append(line)
    if with_flops:
        lines.append("GFLOPs = 1e9 multiply-adds (the papers' convention), attention included")
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"wrote {write_catalog()}")
