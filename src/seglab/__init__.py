"""seglab: a pure-PyTorch toolbox for semantic segmentation."""

from seglab.registry import create_model, list_models

__version__ = "0.1.0"


def convert_checkpoint(src, source: str, model_name: str):
    """Converts a foreign checkpoint (path or state dict) to seglab's state-dict format.

    The constructor options the source needs (LayerNorm eps, mmseg's head variant) and its class count come with
    `seglab.convert.convert_checkpoint(...)`, which returns them beside the state dict; `seglab convert` stores
    them in the checkpoint's metadata.

    Args:
        src: a file path or an already loaded state dict.
        source: one of `hf`, `official`, `mmseg`.
        model_name: the seglab model the weights are for (e.g. `segformer_b2`).
    """
    from seglab.convert import convert_checkpoint as _convert

    return _convert(src, source, model_name).state_dict


__all__ = ["__version__", "convert_checkpoint", "create_model", "list_models"]
