"""SegFormer against Hugging Face transformers with the same random weights (converted by `seglab.convert`, source `hf`).

Whole models (`SegformerForSemanticSegmentation`, B0 and B2 shapes) compare stage features and logits; the ImageNet
encoders (`nvidia/mit-b*` style: `SegformerForImageClassification` as the hub stores it, and a bare `SegformerModel`)
convert to backbone-only weights that go through `model.pretrained`'s loader and must reproduce HF's hidden states.
Every parameter, BN statistic and LayerNorm affine is random (`testkit.randomize_`); 75x93 is odd on both sides.
"""

from __future__ import annotations

import pytest
import torch
from testkit import compare, randomize_
from torch import nn

from seglab import create_model
from seglab.checkpoint import load_backbone_weights, save_weights
from seglab.convert import convert_checkpoint

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.reference

INPUT_SIZE = (75, 93)  # stages 19x24, 10x12, 5x6, 3x3: every overlapping patch embedding pads unevenly

# the published nvidia/segformer-b* configurations
HF_CONFIGS = {
    "segformer_b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "segformer_b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}


def _config(model_name: str, num_labels: int):
    return transformers.SegformerConfig(num_labels=num_labels, num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
                                        **HF_CONFIGS[model_name])


def _hf_model(model_name: str, num_labels: int, seed: int) -> nn.Module:
    model = transformers.SegformerForSemanticSegmentation(_config(model_name, num_labels)).eval()
    return randomize_(model, seed)


def _layer_norm_eps(model: nn.Module) -> set[float]:
    return {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, *INPUT_SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_name", ["segformer_b0", "segformer_b2"])
@torch.no_grad()
def test_logits_match_transformers(model_name):
    hf = _hf_model(model_name, num_labels=11, seed=3)
    result = convert_checkpoint(hf.state_dict(), "hf", model_name)
    assert result.num_classes == 11 and result.dropped == []
    ours = create_model(model_name, num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    assert _layer_norm_eps(ours) == _layer_norm_eps(hf)

    x = _image()
    hf_out = hf(pixel_values=x, output_hidden_states=True)
    for stage, (a, b) in enumerate(zip(ours.backbone(x), hf_out.hidden_states, strict=True)):
        compare(a, b, pair=f"segformer/hf {model_name} stage {stage}")
    logits = ours(x)
    assert logits.shape == hf_out.logits.shape == (1, 11, 19, 24)
    assert hf_out.logits.std() > 0.1
    compare(logits, hf_out.logits, pair=f"segformer/hf {model_name} logits")


def test_hub_layout_file_converts_like_the_module_layout(tmp_path):
    """`save_pretrained` writes the hub key names (`segformer.encoder.block...`); both layouts convert alike."""
    hf = _hf_model("segformer_b0", num_labels=5, seed=4)
    hf.save_pretrained(tmp_path)
    from_file = convert_checkpoint(tmp_path / "model.safetensors", "hf", "segformer_b0")
    from_module = convert_checkpoint(hf.state_dict(), "hf", "segformer_b0")
    assert from_file.state_dict.keys() == from_module.state_dict.keys()
    for key, value in from_module.state_dict.items():
        assert torch.equal(from_file.state_dict[key], value), key


# --- ImageNet encoders (nvidia/mit-b*) as backbone-only weights ----------------------------------------------------


@pytest.mark.parametrize("layout", ["hub_classifier_file", "segformer_model"])
@torch.no_grad()
def test_imagenet_encoder_converts_to_pretrained_backbone(layout, tmp_path):
    """`nvidia/mit-b0` is a `SegformerForImageClassification` (`segformer.encoder.*` + `classifier.*` in the hub
    file); a bare `SegformerModel` has the encoder alone under its module names. Both convert to `backbone.*` keys,
    are written as `seglab convert` writes them and loaded by `model.pretrained`'s loader into `segformer_b0`."""
    config = _config("segformer_b0", num_labels=1000)
    if layout == "hub_classifier_file":
        classifier = randomize_(transformers.SegformerForImageClassification(config).eval(), seed=5)
        classifier.save_pretrained(tmp_path / "mit-b0")
        src, encoder = tmp_path / "mit-b0" / "model.safetensors", classifier.segformer
    else:
        encoder = randomize_(transformers.SegformerModel(config).eval(), seed=6)
        src = encoder.state_dict()
    result = convert_checkpoint(src, "hf", "segformer_b0")
    assert result.backbone_only and result.num_classes is None
    assert sorted(result.dropped) == (["classifier.bias", "classifier.weight"] if layout == "hub_classifier_file"
                                      else [])
    assert all(k.startswith("backbone.") for k in result.state_dict)
    save_weights(tmp_path / "mit_b0.safetensors", result.state_dict, "segformer_b0", None, result.overrides,
                 extra={"converted_from": "hf", "backbone_only": "true"})

    ours = create_model("segformer_b0", num_classes=19, **result.overrides).eval()
    load_backbone_weights(ours, tmp_path / "mit_b0.safetensors")
    x = _image(1)
    expected = encoder(pixel_values=x, output_hidden_states=True).hidden_states
    actual = ours.backbone(x)
    assert len(actual) == len(expected) == 4
    assert expected[-1].std() > 0.1
    for stage, (a, e) in enumerate(zip(actual, expected, strict=True)):
        compare(a, e, pair=f"segformer/hf mit-b0 backbone ({layout}) stage {stage}")
