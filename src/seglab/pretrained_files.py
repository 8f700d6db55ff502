"""The file layout a seglab model travels in (a folder or a Hugging Face Hub repo), and `PretrainedMixin`, which
gives every model `save_pretrained` and `push_to_hub` (`seglab.from_pretrained` reads it back).

Layout:
    config.json        `library: seglab`, the model name, `num_classes`, constructor `overrides`, and what predicting
                       needs: `classes`, `palette`, `mean`, `std`, the `test` pipeline (scale, size_divisor, whole or
                       slide with crop and stride), plus `dataset`, `weights` (the table row it started from) and
                       `metrics` when known.
    model.safetensors  the state dict, with seglab's checkpoint metadata (`create_model(checkpoint=...)` reads it too).
    README.md          a model card: the facts above, the figures, and how to load it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
_META_KEYS = ("classes", "palette", "mean", "std", "test", "dataset", "weights", "metrics")


def model_config(model, meta: dict[str, Any]) -> dict[str, Any]:
    """The `config.json` of `model` with `meta` (class names, pipeline, metrics)."""
    from seglab.version import __version__

    config = {"library": "seglab", "seglab_version": __version__, "model": model.model_name,
              "num_classes": int(model.num_classes), "overrides": dict(getattr(model, "model_overrides", {}))}
    config.update({k: meta[k] for k in _META_KEYS if meta.get(k) is not None})
    classes = config.get("classes")
    if classes is not None and len(classes) != config["num_classes"]:
        raise ValueError(f"{len(classes)} class names for a {config['num_classes']}-class model")
    return config


def model_card(config: dict[str, Any], repo_id: str | None = None) -> str:
    """A Hugging Face model card (YAML front matter + Markdown) for a saved seglab model."""
    name, where = config["model"], repo_id or "PATH_OR_REPO_ID"
    front = ["---", "library_name: seglab", "pipeline_tag: image-segmentation",
             "tags: [seglab, image-segmentation, semantic-segmentation]"]
    if config.get("dataset"):
        front.append(f"datasets: [{config['dataset']}]")
    metrics = config.get("metrics") or {}
    if "mIoU" in metrics and config.get("dataset"):
        front += ["model-index:", f"- name: {name}", "  results:", "  - task: {type: image-segmentation}",
                  f"    dataset: {{name: {config['dataset']}, type: {config['dataset']}}}",
                  f"    metrics: [{{type: mIoU, value: {metrics['mIoU']}}}]"]
    front.append("---")
    lines = [*front, "", f"# {name} (seglab)", "",
             f"A `{name}` semantic segmentation model for {config['num_classes']} classes"
             + (f", trained on {config['dataset']}" if config.get("dataset") else "")
             + (f", starting from the published weights `{config['weights']}`" if config.get("weights") else "")
             + ".", "", "## Use", "", "```python", "import seglab", "",
             f'predictor = seglab.Predictor.from_pretrained("{where}")',
             'result = predictor("photo.jpg")  # result.labels: (H, W) class indices; result.save("out/")',
             "```", "", f"or `seglab predict --from-pretrained {where} photo.jpg --out out/`.", ""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in metrics.items()], ""]
    test = config.get("test") or {}
    if test or config.get("mean"):
        lines += ["## Test pipeline", "",
                  f"- normalisation: mean {config.get('mean')}, std {config.get('std')} (0-255 units, RGB)",
                  f"- resize: {test.get('scale') or 'none'} (long, short; keep ratio)"
                  + (f", sides rounded up to a multiple of {test['size_divisor']}" if test.get("size_divisor") else ""),
                  f"- inference: {test.get('mode', 'whole')}"
                  + (f", windows {test.get('crop')} stride {test.get('stride')}" if test.get("mode") == "slide"
                     else ""), ""]
    if config.get("classes"):
        lines += ["## Classes", "", ", ".join(f"{i}: {c}" for i, c in enumerate(config["classes"])), ""]
    lines += ["## Files", "", "`config.json` (model name, options, classes, palette, pipeline), `model.safetensors`.",
              f"Saved by seglab {config.get('seglab_version', '')}.", ""]
    return "\n".join(lines)


def save_pretrained_files(model, directory: str | Path, meta: dict[str, Any] | None = None,
                          repo_id: str | None = None) -> Path:
    """Writes `config.json`, `model.safetensors` and `README.md` of `model` into `directory` (each atomically)."""
    from seglab.checkpoint import atomic_write, save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {**getattr(model, "seglab_meta", {}), **(meta or {})}
    config = model_config(model, meta)
    extra = {"seglab_meta": json.dumps({k: config[k] for k in _META_KEYS if k in config})}
    if "classes" in config:
        extra["classes"] = json.dumps(config["classes"])
        if "palette" in config:
            extra["palette"] = json.dumps(config["palette"])
    save_model(directory / WEIGHTS_NAME, model, extra=extra)

    def write_text(text: str):
        return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(directory / CONFIG_NAME, write_text(json.dumps(config, indent=2) + "\n"))
    atomic_write(directory / CARD_NAME, write_text(model_card(config, repo_id)))
    return directory


class PretrainedMixin:
    """`save_pretrained(dir)` and `push_to_hub(repo_id)` for models built by `create_model`."""

    def save_pretrained(self, directory: str | Path, **meta: Any) -> Path:
        """Writes the model as `config.json` + `model.safetensors` + `README.md` into `directory`.

        Args:
            directory: created if needed; existing files of the same names are replaced.
            **meta: `classes`, `palette`, `mean`, `std`, `test`, `dataset`, `metrics` to record, over what the model
                already carries (`model.seglab_meta`: set by `create_model` from published weights or a checkpoint
                written by `seglab train`).
        """
        return save_pretrained_files(self, directory, meta)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None,
                    commit_message: str = "Upload seglab model", revision: str | None = None, **meta: Any) -> str:
        """Uploads the `save_pretrained` files to a Hugging Face Hub model repo (created if missing) in one commit;
        returns the commit URL. The endpoint and token follow `HF_ENDPOINT` / `HF_TOKEN` (or `hf auth login`)."""
        from huggingface_hub import HfApi

        api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained_files(self, tmp, meta, repo_id=repo_id)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message,
                                     revision=revision, repo_type="model")
        return str(getattr(info, "commit_url", info))
