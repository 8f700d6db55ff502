"""The published-weights table (`weights.yaml`, data): which checkpoint a (model, tag) names, and how to get it.

Each row names a registered model, a tag (`ade20k-512`, `cityscapes-1024`, `imagenet`, ...), where the file lives
(a Hugging Face Hub repo file, a direct URL, or a page a person must download from), the converter that turns it into
seglab's keys, the publisher's hash when there is one, and what the weights were trained and tested with (dataset,
crop, published mIoU, test pipeline, normalisation, licence). `python -m seglab.hub.docs` writes `docs/weights.md`
from it.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
BACKBONE_DATASETS = ("imagenet", "imagenet22k")
_HEX = re.compile(r"^[0-9a-f]+$")
_KEYS = {"model", "tag", "default", "dataset", "crop", "schedule", "convert", "hub", "url", "manual", "sha256",
         "md5", "miou", "miou_ms", "img_size", "test", "mean", "std", "config", "licence", "evidence", "notes"}


class UnknownWeightsError(KeyError):
    """A (model, tag) the table does not have; the message lists the model's tags."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class HubFile:
    repo: str
    file: str
    revision: str = "main"


@dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint of one model (a row of `weights.yaml`)."""

    model: str
    tag: str
    dataset: str
    convert: str
    crop: tuple[int, int] | None = None
    default: bool = False
    schedule: str | None = None
    hub: HubFile | None = None
    url: str | None = None
    manual: dict[str, str] | None = None
    sha256: str | None = None  # the publisher's SHA-256, whole or a prefix (mmseg / torchvision file names)
    md5: str | None = None  # an MD5 prefix (detectron2 `model_final_<md5>.pkl`)
    miou: float | None = None
    miou_ms: float | None = None
    img_size: int | None = None
    test: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    config: str | None = None
    licence: str = ""
    evidence: str = ""
    notes: str = ""

    @property
    def name(self) -> str:
        return f"{self.model}:{self.tag}"

    @property
    def backbone_only(self) -> bool:
        return self.dataset in BACKBONE_DATASETS

    @property
    def fetch(self) -> str:
        """How a program gets the file: `hub`, `url` or `manual`."""
        return "hub" if self.hub else "url" if self.url else "manual"

    @property
    def file_name(self) -> str:
        """The source file's name (its last path part)."""
        if self.hub:
            return self.hub.file.rsplit("/", 1)[-1]
        if self.url:
            return self.url.rsplit("/", 1)[-1].split("?", 1)[0]
        return self.manual["file"]

    @property
    def location(self) -> str:
        """Where the file lives, for messages: `hf://repo/file@revision`, the URL, or the page to download from."""
        if self.hub:
            return f"hf://{self.hub.repo}/{self.hub.file}@{self.hub.revision}"
        return self.url or self.manual["page"]


def _pair(value: Any, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    raise ValueError(f"{where}: expected an int or [h, w], got {value!r}")


def _row(raw: dict[str, Any], index: int) -> WeightsEntry:
    where = f"weights.yaml row {index} ({raw.get('model')}:{raw.get('tag')})"
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_KEYS))}")
    for key in ("model", "tag", "dataset", "convert"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ValueError(f"{where}: `{key}` must be a non-empty string")
    kinds = [k for k in ("hub", "url", "manual") if raw.get(k)]
    if len(kinds) != 1:
        raise ValueError(f"{where}: needs exactly one of hub / url / manual, has {kinds or 'none'}")
    hub = None
    if raw.get("hub"):
        hub = HubFile(**raw["hub"])
    if raw.get("manual") and not {"page", "file"} <= set(raw["manual"]):
        raise ValueError(f"{where}: `manual` needs `page` and `file`")
    hashes = {}
    for key in ("sha256", "md5"):
        value = raw.get(key)
        if value is not None:
            value = str(value).lower()
            full = 64 if key == "sha256" else 32
            if not _HEX.match(value) or not 6 <= len(value) <= full:
                raise ValueError(f"{where}: `{key}` must be 6 to {full} hex digits, got {raw[key]!r}")
        hashes[key] = value
    options = {k: raw[k] for k in ("default", "schedule", "img_size", "config", "licence", "evidence", "notes")
               if raw.get(k) is not None}
    for key in ("miou", "miou_ms"):
        if raw.get(key) is not None:
            options[key] = float(raw[key])
    for key in ("mean", "std"):
        if raw.get(key) is not None:
            options[key] = tuple(float(v) for v in raw[key])
    if "schedule" in options:
        options["schedule"] = str(options["schedule"])
    return WeightsEntry(model=raw["model"], tag=raw["tag"], dataset=raw["dataset"], convert=raw["convert"],
                        crop=_pair(raw.get("crop"), where), hub=hub, url=raw.get("url"), manual=raw.get("manual"),
                        test=dict(raw.get("test") or {}), **hashes, **options)


@dataclass(frozen=True)
class WeightsTable:
    entries: tuple[WeightsEntry, ...]
    unpublished: tuple[dict[str, str], ...]
    omitted: tuple[dict[str, str], ...]


@lru_cache(maxsize=1)
def load_table() -> WeightsTable:
    """The package's weights table, parsed and checked (cached)."""
    import yaml

    text = resources.files("seglab.hub").joinpath("weights.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    entries = tuple(_row(raw, i) for i, raw in enumerate(data.get("weights") or []))
    seen: set[str] = set()
    defaults: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ValueError(f"weights.yaml: {entry.name} appears twice")
        seen.add(entry.name)
        if entry.default:
            if entry.model in defaults:
                raise ValueError(f"weights.yaml: {entry.model} has two default rows")
            defaults.add(entry.model)
    return WeightsTable(entries, tuple(data.get("unpublished") or []), tuple(data.get("omitted") or []))


def list_weights(pattern: str = "*") -> list[WeightsEntry]:
    """Rows whose `model:tag` (or model name) matches a shell-style pattern, in table order."""
    return [e for e in load_table().entries if fnmatch.fnmatch(e.name, pattern) or fnmatch.fnmatch(e.model, pattern)]


def default_entry(model: str) -> WeightsEntry | None:
    """The row `pretrained=True` loads: the `default` one, else the model's first segmentation row."""
    rows = [e for e in load_table().entries if e.model == model]
    return next((e for e in rows if e.default), next((e for e in rows if not e.backbone_only), None))


def find_weights(model: str, tag: str | bool) -> WeightsEntry:
    """The row for `model` and `tag` (`True`: the model's default row; `"imagenet"`, when the model has no row of
    that exact tag, its first backbone row, e.g. the ImageNet-22k AugReg ViT of Segmenter).

    Raises:
        UnknownWeightsError: naming the model's tags (and close matches), or why it has none.
    """
    table = load_table()
    rows = [e for e in table.entries if e.model == model]
    if tag is True:
        entry = default_entry(model)
        if entry is not None:
            return entry
    else:
        for entry in rows:
            if entry.tag == tag:
                return entry
        if tag == "imagenet":  # "the ImageNet weights the recipe starts from": the model's first backbone row
            entry = next((e for e in rows if e.backbone_only), None)
            if entry is not None:
                return entry
    reasons = [u["reason"] for u in table.unpublished if u.get("model") == model]
    if not rows:
        why = f": {reasons[0]}" if reasons else ""
        raise UnknownWeightsError(f"no published weights for {model} in seglab's table{why}; train it, or load a "
                                  f"file with checkpoint=PATH")
    tags = [e.tag for e in rows]
    if tag is True:
        raise UnknownWeightsError(f"{model} has backbone weights only ({', '.join(tags)}): pass the tag")
    close = difflib.get_close_matches(str(tag), tags, n=2, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise UnknownWeightsError(f"{model} has no weights tagged {tag!r}; its tags: {', '.join(tags)}{hint}")
