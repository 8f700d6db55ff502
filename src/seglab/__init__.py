"""seglab: a pure-PyTorch toolbox for semantic segmentation.

Importing the package stays light (no torch): the functions below import what they need when called.
"""

from __future__ import annotations

from typing import Any

from seglab.registry import list_models
from seglab.version import __version__


def create_model(name: str, num_classes: int | None = None, checkpoint=None, pretrained: str | bool | None = None,
                 progress: bool = True, **overrides: Any):
    """Builds a registered model, optionally with published weights by tag or a checkpoint file.

    `create_model("segformer_b0", pretrained="ade20k-512")` downloads, verifies, converts and caches the published
    weights (`seglab weights segformer_b0` lists the tags; `pretrained=True` takes the default one, "imagenet" the
    backbone's ImageNet weights); `num_classes=` another count keeps everything but the classifier (fine-tuning).
    See `seglab.hub.pretrained.create_model` for the arguments.
    """
    from seglab.hub.pretrained import create_model as _create_model

    return _create_model(name, num_classes=num_classes, checkpoint=checkpoint, pretrained=pretrained,
                         progress=progress, **overrides)


def from_pretrained(source, revision: str | None = None, **overrides: Any):
    """Loads a model written by `model.save_pretrained(dir)` or `model.push_to_hub(repo_id)`: a folder or a repo id."""
    from seglab.hub.sharing import from_pretrained as _from_pretrained

    return _from_pretrained(source, revision=revision, **overrides)


def list_weights(pattern: str = "*"):
    """Rows of the published-weights table whose `model:tag` or model name matches `pattern`."""
    from seglab.hub.table import list_weights as _list_weights

    return _list_weights(pattern)


def convert_checkpoint(src, source: str, model_name: str):
    """Converts a foreign checkpoint (path or state dict) to seglab's state-dict format.

    The constructor options the source needs (LayerNorm eps, mmseg's head variant) and its class count come with
    `seglab.convert.convert_checkpoint(...)`, which returns them beside the state dict; `seglab convert` stores
    them in the checkpoint's metadata.

    Args:
        src: a file path or an already loaded state dict.
        source: one of `hf`, `official`, `mmseg`, `timm`, `torchvision`.
        model_name: the seglab model the weights are for (e.g. `segformer_b2`).
    """
    from seglab.convert import convert_checkpoint as _convert

    return _convert(src, source, model_name).state_dict


def __getattr__(name: str):
    if name == "Predictor":
        from seglab.hub.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'seglab' has no attribute {name!r}")


__all__ = ["Predictor", "__version__", "convert_checkpoint", "create_model", "from_pretrained", "list_models",
           "list_weights"]
