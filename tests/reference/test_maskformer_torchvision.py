"""MaskFormer's ImageNet ResNet backbones from torchvision state dicts (`seglab convert --source official`).

A torchvision `resnet50` / `resnet101` with random weights and BN statistics (`testkit.randomize_`) is converted as
backbone-only weights of `maskformer_r50` / `maskformer_r101`, written as `seglab convert` writes them and loaded by
`model.pretrained`'s loader; seglab's backbone features must equal torchvision's `layer1`..`layer4` outputs on a 75x93
input (odd: every stride-2 layer rounds up).
"""

from __future__ import annotations

import pytest
import torch
from testkit import compare, randomize_

from seglab import create_model
from seglab.checkpoint import load_backbone_weights, save_weights
from seglab.convert import convert_checkpoint

torchvision = pytest.importorskip("torchvision")


def _torchvision_features(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    features = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        features.append(x)
    return features


@pytest.mark.parametrize(("arch", "model_name"), [("resnet50", "maskformer_r50"), ("resnet101", "maskformer_r101")])
@torch.no_grad()
def test_imagenet_resnet_converts_to_pretrained_backbone(arch, model_name, tmp_path):
    reference = randomize_(getattr(torchvision.models, arch)(weights=None).eval(), seed=0)
    torch.save(reference.state_dict(), tmp_path / f"{arch}.pth")  # what torchvision's weights download holds
    result = convert_checkpoint(tmp_path / f"{arch}.pth", "official", model_name)
    assert result.backbone_only and result.num_classes is None and result.overrides == {}
    assert sorted(result.dropped) == ["fc.bias", "fc.weight"]
    save_weights(tmp_path / "backbone.safetensors", result.state_dict, model_name, None, result.overrides,
                 extra={"converted_from": "official", "backbone_only": "true"})

    ours = create_model(model_name, num_classes=5).eval()
    load_backbone_weights(ours, tmp_path / "backbone.safetensors")
    x = torch.randn(1, 3, 75, 93, generator=torch.Generator().manual_seed(0))
    expected = _torchvision_features(reference, x)
    actual = ours.backbone(x)
    assert [tuple(f.shape[-2:]) for f in actual] == [(19, 24), (10, 12), (5, 6), (3, 3)]
    for stage, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert e.std() > 0.1
        compare(a, e, pair=f"maskformer/torchvision {arch} stage {stage}")
