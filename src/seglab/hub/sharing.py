"""Models that travel: `from_pretrained(dir_or_repo_id)` reads what `model.save_pretrained` / `push_to_hub` wrote
(`seglab.pretrained_files` describes the layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from seglab import registry
from seglab.checkpoint import checkpoint_meta
from seglab.hub.download import hub_download
from seglab.pretrained_files import CONFIG_NAME, WEIGHTS_NAME


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The class names, palette and pipeline a seglab checkpoint records (`seglab train` and `save_pretrained`
    write them), as `model.seglab_meta`; empty for a file without them."""
    meta = checkpoint_meta(path)
    if meta is None:
        return {}
    info = json.loads(meta.extra.get("seglab_meta", "{}"))
    for key in ("classes", "palette"):
        if key in meta.extra and key not in info:
            info[key] = json.loads(meta.extra[key])
    if "pipeline" in meta.extra:
        for key, value in json.loads(meta.extra["pipeline"]).items():
            info.setdefault(key, value)
    return info


def pretrained_files(source: str | Path, revision: str | None = None) -> tuple[dict[str, Any], Path]:
    """(`config.json` contents, path of `model.safetensors`) of a saved folder or a Hub repo id."""
    folder = Path(source)
    if folder.is_dir():
        config_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config_path, weights):
            if not path.is_file():
                raise FileNotFoundError(f"{folder} is not a saved seglab model: {path.name} is missing "
                                        f"(model.save_pretrained writes {CONFIG_NAME} and {WEIGHTS_NAME})")
    elif folder.exists() or str(source).count("/") != 1:
        raise FileNotFoundError(f"{source}: neither a folder written by save_pretrained nor a Hub repo id "
                                f"(owner/name)")
    else:
        config_path = hub_download(str(source), CONFIG_NAME, revision)
        weights = hub_download(str(source), WEIGHTS_NAME, revision)
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    if config.get("library") != "seglab" or "model" not in config:
        raise ValueError(f"{config_path}: not a seglab config.json (expected `library: seglab` and `model`)")
    return config, Path(weights)


def from_pretrained(source: str | Path, revision: str | None = None, **overrides: Any) -> nn.Module:
    """Loads a model saved with `save_pretrained` (a folder) or pushed with `push_to_hub` (a repo id).

    Args:
        source: the folder, or `owner/name` on the Hub (`HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE` apply).
        revision: a Hub branch, tag or commit.
        **overrides: constructor options over the saved ones (`num_classes` is the saved one).

    Returns:
        The model in eval mode, its `seglab_meta` holding the saved classes, palette and test pipeline.
    """
    config, weights = pretrained_files(source, revision)
    model = registry.create_model(config["model"], checkpoint=weights, **overrides)
    model.seglab_meta = {**checkpoint_info(weights), **{k: v for k, v in config.items() if k in (
        "classes", "palette", "mean", "std", "test", "dataset", "weights", "metrics")}}
    return model.eval()
