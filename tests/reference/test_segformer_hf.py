"""SegFormer B0 / B2 against Hugging Face transformers with the same random weights (converted by `seglab.convert`)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from seglab import create_model
from seglab.convert import convert_checkpoint

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.reference

# the published nvidia/segformer-b* configurations
HF_CONFIGS = {
    "segformer_b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "segformer_b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}


def _randomize(model: nn.Module, seed: int) -> None:
    """Random values everywhere, BN running statistics included, so that no term is trivially zero or one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("bias", "running_mean")):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.ndim == 1:  # LayerNorm / BatchNorm scale
                t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(math.prod(t.shape[1:])))


def _hf_model(model_name: str, num_labels: int, seed: int) -> nn.Module:
    config = transformers.SegformerConfig(
        num_labels=num_labels, num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], **HF_CONFIGS[model_name]
    )
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    _randomize(model, seed)
    return model


def _layer_norm_eps(model: nn.Module) -> set[float]:
    return {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}


@pytest.mark.parametrize("model_name", ["segformer_b0", "segformer_b2"])
@torch.no_grad()
def test_logits_match_transformers(model_name):
    hf = _hf_model(model_name, num_labels=11, seed=3)
    result = convert_checkpoint(hf.state_dict(), "hf", model_name)
    assert result.num_classes == 11 and result.dropped == []
    ours = create_model(model_name, num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    assert _layer_norm_eps(ours) == _layer_norm_eps(hf)

    x = torch.randn(1, 3, 100, 140)  # non-square, sides not multiples of 32
    hf_out = hf(pixel_values=x, output_hidden_states=True)
    for stage, (a, b) in enumerate(zip(ours.backbone(x), hf_out.hidden_states, strict=True)):
        assert a.shape == b.shape, f"stage {stage}"
        assert (a - b).abs().max().item() <= 1e-4, f"stage {stage} differs"
    logits = ours(x)
    assert logits.shape == hf_out.logits.shape == (1, 11, 25, 35)
    assert (logits - hf_out.logits).abs().max().item() <= 1e-4


def test_hub_layout_file_converts_like_the_module_layout(tmp_path):
    """`save_pretrained` writes the hub key names (`segformer.encoder.block...`); both layouts convert alike."""
    hf = _hf_model("segformer_b0", num_labels=5, seed=4)
    hf.save_pretrained(tmp_path)
    from_file = convert_checkpoint(tmp_path / "model.safetensors", "hf", "segformer_b0")
    from_module = convert_checkpoint(hf.state_dict(), "hf", "segformer_b0")
    assert from_file.state_dict.keys() == from_module.state_dict.keys()
    for key, value in from_module.state_dict.items():
        assert torch.equal(from_file.state_dict[key], value), key
