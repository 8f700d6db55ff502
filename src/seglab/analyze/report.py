"""Self-contained HTML reports: figures embedded as base64 PNGs, tables, and what produced them (the run configs
and the checkpoints' digests), so that one file can be mailed or archived on its own."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from seglab.checkpoint import atomic_write
from seglab.version import __version__

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.note { color: #555; }
"""


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """An HTML table; floats printed with `digits` decimals."""
    def cell(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """The same table in Markdown (for the terminal and for docs)."""
    def cell(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """An HTML report built section by section, written with `write(path)`."""

    def __init__(self, title: str, command: str) -> None:
        self.title = title
        self.command = command
        self.parts: list[str] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p class='note'>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> None:
        self.parts.append(table_html(header, rows, digits))

    def figure(self, png: str | Path, caption: str = "") -> None:
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        alt = html.escape(caption or Path(png).name)
        self.parts.append(f"<figure><img alt='{alt}' src='data:image/png;base64,{data}'>"
                          + (f"<figcaption>{html.escape(caption)}</figcaption>" if caption else "") + "</figure>")

    def provenance(self, subjects: Sequence[Any]) -> None:
        """Each model's checkpoint and digest, and its run config."""
        self.heading("Models, weights and configs")
        self.table(["model", "checkpoint", "sha256 (16)"],
                   [(s.label, s.checkpoint or "-", s.digest) for s in subjects])
        for s in subjects:
            self.parts.append(f"<details><summary>run config of {html.escape(s.label)}</summary>"
                              f"<pre>{html.escape(s.config_text)}</pre></details>")

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(self.title)}"
                f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"<p class='note'>seglab {__version__}, {stamp}: <code>{html.escape(self.command)}</code></p>"
                + "".join(self.parts) + "</body></html>")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
        return path


def save_figure(figure, out_png: str | Path) -> Path:
    """Writes a matplotlib figure as a PNG, atomically."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_png, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    return out_png


def finish_line_plot(figure, ax, out_png: str | Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Labels, grid and legend of a line plot, then `save_figure`."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(figure, out_png)


def write_json(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2), encoding="utf-8"))
    return path
