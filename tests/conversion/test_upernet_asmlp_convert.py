"""End-to-end conversion into the registered UperNet-AS-MLP models: a checkpoint of the AS-MLP-Semantic-Segmentation
repository (mmseg 0.11 names) and an ImageNet AS-MLP checkpoint as backbone initialisation, through
`seglab.convert.convert_checkpoint`."""

from __future__ import annotations

import re

import pytest
import torch

from seglab.convert import convert_checkpoint
from seglab.registry import create_model


def _uper_mmseg_key(key: str) -> str:
    """seglab UperNet head key -> mmseg 0.x name, written independently of the converter's table."""
    key = re.sub(r"^decode_head\.ppm\.convs\.(\d+)\.conv\.", r"decode_head.psp_modules.\1.1.conv.", key)
    key = re.sub(r"^decode_head\.ppm\.convs\.(\d+)\.norm\.", r"decode_head.psp_modules.\1.1.bn.", key)
    key = re.sub(r"^decode_head\.classifier\.", "decode_head.conv_seg.", key)
    key = re.sub(r"^aux_heads\.0\.classifier\.", "auxiliary_head.conv_seg.", key)
    key = re.sub(r"^aux_heads\.0\.", "auxiliary_head.", key)
    return re.sub(r"\.norm\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r".bn.\1", key) \
        if not key.startswith("backbone.") else key


def test_upernet_asmlp_segmentation_checkpoint_round_trip():
    torch.manual_seed(0)
    model = create_model("upernet_asmlp_t", num_classes=7).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    official = {_uper_mmseg_key(k): v.clone() for k, v in model.state_dict().items()}
    assert "decode_head.psp_modules.3.1.bn.running_var" in official and "auxiliary_head.convs.0.conv.weight" in official
    assert "backbone.layers.2.blocks.5.axial_shift.conv2_2.weight" in official
    result = convert_checkpoint(official, "official", "upernet_asmlp_t")
    assert result.num_classes == 7 and result.overrides == {}
    again = create_model("upernet_asmlp_t", num_classes=7, **result.overrides).eval()
    again.load_state_dict(result.state_dict, strict=True)
    x = torch.randn(1, 3, 77, 50)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_upernet_asmlp_refuses_other_variant_and_converts_imagenet_backbone():
    torch.manual_seed(0)
    with torch.device("meta"):
        seg_s = create_model("upernet_asmlp_s", num_classes=7)
    official_s = {_uper_mmseg_key(k): torch.zeros(v.shape) for k, v in seg_s.state_dict().items()}
    with pytest.raises(ValueError, match="AS-MLP-S checkpoint"):
        convert_checkpoint(official_s, "official", "upernet_asmlp_t")
    # an ImageNet classifier (official `AS_MLP`): backbone names without prefix, classifier `norm` / `head`
    from seglab.backbones.asmlp import ASMLP, ASMLP_CONFIGS

    classifier = ASMLP(ASMLP_CONFIGS["t"], num_classes=1000)
    imagenet = {k: v for k, v in classifier.state_dict().items() if not re.match(r"norm\d\.", k)}
    result = convert_checkpoint(imagenet, "official", "upernet_asmlp_t")
    assert result.backbone_only and result.num_classes is None
    assert {"norm.weight", "head.weight"} <= set(result.dropped)
    model = create_model("upernet_asmlp_t", num_classes=5)
    missing, unexpected = model.load_state_dict(result.state_dict, strict=False)
    assert unexpected == [] and all(not k.startswith("backbone.") for k in missing)
    assert torch.equal(model.backbone.layers[1].blocks[0].axial_shift.conv1.weight,
                       imagenet["layers.1.blocks.0.axial_shift.conv1.weight"])
