"""Sources `timm` and `torchvision` of `seglab.convert.convert_checkpoint`: ImageNet classifiers in those libraries'
layouts (what the weights table fetches from `timm/<name>` on the Hugging Face Hub and from download.pytorch.org)
convert to backbone-only weights that load strictly into the seglab model's backbone (`load_backbone_weights`, the
loader of a recipe's `model.pretrained`) and reproduce the library model's features.

Each test builds the smallest real library model of a family with random weights (`pretrained=False`), saves its
state dict as a file and converts that file. The large ViTs of `setr_*` / `segvit_*` are checked key for key and
shape for shape on the meta device (no memory, no file): their layout is the ViT-T one that is compared numerically.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from testkit import compare, timm_vit_features
from torch import nn

from seglab import create_model
from seglab.checkpoint import load_backbone_weights, save_weights
from seglab.convert import CONVERTERS, convert_checkpoint

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.reference


def _randomize(model: nn.Module, seed: int) -> None:
    """Random values in every floating tensor (LayerNorm / BatchNorm affines, biases, tokens, position embeddings and
    bias tables included); BatchNorm running variances stay positive."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5, generator=gen)
            elif name.endswith(("bias", "running_mean")):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.ndim == 1:  # norm scales
                t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=gen))
            elif name.endswith(("cls_token", "pos_embed", "relative_position_bias_table")):
                t.copy_(0.5 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(math.prod(t.shape[1:])))


def _convert_and_load(library_model: nn.Module, source: str, model_name: str, tmp_path, **options) -> nn.Module:
    """Saves the library model's state dict, converts the file, writes the result as `seglab convert` does and loads
    it with the run's backbone loader into the model built with the result's overrides."""
    src = tmp_path / f"{model_name}_{source}.pth"
    torch.save(library_model.state_dict(), src)
    result = convert_checkpoint(src, source, model_name, **options)
    assert result.backbone_only and result.num_classes is None
    assert all(k.startswith("backbone.") for k in result.state_dict)
    dst = tmp_path / f"{model_name}_{source}.safetensors"
    save_weights(dst, result.state_dict, model_name, None, result.overrides,
                 extra={"converted_from": source, "backbone_only": "true"})
    ours = create_model(model_name, num_classes=3, **result.overrides).eval()
    load_backbone_weights(ours, dst)  # strict: every backbone tensor present with its shape
    return ours


def test_new_sources_are_registered():
    assert set(CONVERTERS["timm"]) == {"setr_", "segvit_", "segmenter_vit_", "upernet_swin_", "maskformer_swin_",
                                       "fcn_hrnetv2_"}
    assert set(CONVERTERS["torchvision"]) == {"maskformer_r", "mask_rcnn_"}
    with pytest.raises(ValueError, match="no 'torchvision' converter for model 'maskformer_swin_t'"):
        convert_checkpoint({}, "torchvision", "maskformer_swin_t")
    with pytest.raises(ValueError, match="no 'timm' converter for model 'segformer_b0'"):
        convert_checkpoint({}, "timm", "segformer_b0")


# --- timm ViT: segmenter_vit_* (numerically), segvit_* / setr_* (keys and shapes) ---------------------------------


@torch.no_grad()
def test_timm_vit_as_segmenter_backbone(tmp_path):
    """`vit_tiny_patch16_384` (grid 24) for `segmenter_vit_t` at img_size 160 (grid 10): the converter resamples the
    position embedding with the model's bicubic mode; timm built for 160 with its own pretrained filter, told the same
    mode without antialiasing, gives the same block outputs."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    source = timm.create_model("vit_tiny_patch16_384", pretrained=False).eval()
    _randomize(source, seed=1)
    ours = _convert_and_load(source, "timm", "segmenter_vit_t", tmp_path, img_size=160)
    backbone = ours.backbone
    assert backbone.grid_size == (10, 10) and backbone.interpolate_mode == "bicubic"

    reference = timm.create_model("vit_tiny_patch16_384", pretrained=False, img_size=160).eval()
    reference.load_state_dict(checkpoint_filter_fn(source.state_dict(), reference, interpolation="bicubic",
                                                   antialias=False), strict=True)
    image = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    expected = timm_vit_features(reference, image, backbone)
    actual = backbone(image)
    assert len(actual) == len(expected)
    for index, a, e in zip(backbone.out_indices, actual, expected, strict=True):
        assert e.std() > 0.1
        compare(a, e, pair=f"segmenter/timm vit_tiny_patch16_384 block {index}")

    # the same file through `official` differs only by the original code's numerics
    official = convert_checkpoint(tmp_path / "segmenter_vit_t_timm.pth", "official", "segmenter_vit_t", img_size=160)
    assert official.overrides == {"img_size": 160, "interpolate_mode": "bilinear"}
    with pytest.raises(ValueError, match="whole Segmenter checkpoint"):
        convert_checkpoint({"encoder.cls_token": torch.zeros(1, 1, 192)}, "timm", "segmenter_vit_t")


@pytest.mark.parametrize(("timm_name", "model_name"),
                         [("vit_base_patch16_384", "segvit_vit_b"), ("vit_large_patch16_384", "segvit_shrunk_vit_l"),
                          ("vit_large_patch16_384", "setr_naive_vit_l"), ("vit_large_patch16_384", "setr_mla_vit_l")])
def test_timm_vit_as_segvit_and_setr_backbone(timm_name, model_name):
    with torch.device("meta"):
        source = timm.create_model(timm_name, pretrained=False)
    result = convert_checkpoint(source.state_dict(), "timm", model_name)
    assert result.backbone_only and result.num_classes is None
    assert {"head.weight", "head.bias"} <= set(result.dropped)
    with torch.device("meta"):
        ours = create_model(model_name, **result.overrides)
    expected = {f"backbone.{k}": tuple(v.shape) for k, v in ours.backbone.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in result.state_dict.items()} == expected


# --- timm Swin: upernet_swin_* and maskformer_swin_* ---------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["upernet_swin_t", "maskformer_swin_t"])
@torch.no_grad()
def test_timm_swin_backbone(model_name, tmp_path):
    """`swin_tiny_patch4_window7_224` at 224 x 224 (stage maps 56, 28, 14, 7: no padding, the last stage one window):
    the stage outputs equal timm's features after the per-stage output norms, which an ImageNet checkpoint lacks and
    the converter fills with LayerNorm's initialisation (weight 1, bias 0)."""
    source = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    _randomize(source, seed=2)
    ours = _convert_and_load(source, "timm", model_name, tmp_path)
    for i, norm in enumerate(ours.backbone.out_norms.values()):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)), i
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias)), i

    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, features_only=True).eval()
    reference.load_state_dict({k.replace("layers.", "layers_", 1): v for k, v in source.state_dict().items()
                               if k.replace("layers.", "layers_", 1) in reference.state_dict()}, strict=True)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = reference(image)  # (B, H, W, C) per stage
    actual = ours.backbone(image)
    assert len(actual) == len(expected) == 4
    for i, (a, e, norm) in enumerate(zip(actual, expected, ours.backbone.out_norms.values(), strict=True)):
        e = F.layer_norm(e, norm.normalized_shape, eps=norm.eps).permute(0, 3, 1, 2)
        compare(a, e, pair=f"{model_name.split('_')[0]}/timm swin_tiny_patch4_window7_224 stage {i}")


# --- timm HRNet: fcn_hrnetv2_* ---------------------------------------------------------------------------------------


@torch.no_grad()
def test_timm_hrnet_small_v2_as_w18s_backbone(tmp_path):
    """`hrnet_w18_small_v2` is the block layout of mmseg's `hr18s` (`fcn_hrnetv2_w18s`): it loads strictly and, with
    the returned nearest fuse upsampling, reproduces timm's four branches (190 x 254 halves exactly down to stride
    32, which timm's scale-factor upsampling needs)."""
    source = timm.create_model("hrnet_w18_small_v2", pretrained=False).eval()
    _randomize(source, seed=3)
    ours = _convert_and_load(source, "timm", "fcn_hrnetv2_w18s", tmp_path)
    assert ours.backbone is not None
    result = convert_checkpoint(tmp_path / "fcn_hrnetv2_w18s_timm.pth", "timm", "fcn_hrnetv2_w18s")
    assert result.overrides == {"fuse_upsample": "nearest"}

    reference = timm.create_model("hrnet_w18_small_v2", pretrained=False, features_only=True, feature_location="",
                                  out_indices=(1, 2, 3, 4)).eval()
    reference.load_state_dict({k: v for k, v in source.state_dict().items() if k in reference.state_dict()},
                              strict=True)
    image = torch.randn(1, 3, 190, 254, generator=torch.Generator().manual_seed(0))
    expected, actual = reference(image), ours.backbone(image)
    assert len(actual) == len(expected) == 4
    for level, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert e.abs().max() > 0.1
        compare(a, e, pair=f"fcn_hrnetv2/timm hrnet_w18_small_v2 branch {level}")
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_checkpoint(tmp_path / "fcn_hrnetv2_w18s_timm.pth", "timm", "fcn_hrnetv2_w18s_v1")


# --- torchvision ResNet: maskformer_r50 / maskformer_r101 ---------------------------------------------------------


@torch.no_grad()
def test_torchvision_resnet_as_maskformer_backbone(tmp_path):
    source = torchvision.models.resnet50().eval()
    _randomize(source, seed=4)
    ours = _convert_and_load(source, "torchvision", "maskformer_r50", tmp_path)
    image = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    x = source.maxpool(source.relu(source.bn1(source.conv1(image))))
    expected = []
    for layer in (source.layer1, source.layer2, source.layer3, source.layer4):
        x = layer(x)
        expected.append(x)
    actual = ours.backbone(image)
    assert len(actual) == 4
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        compare(a, e, pair=f"maskformer/torchvision resnet50 layer{i + 1}")
    result = convert_checkpoint(tmp_path / "maskformer_r50_torchvision.pth", "torchvision", "maskformer_r50")
    assert {"fc.weight", "fc.bias"} <= set(result.dropped)
    with pytest.raises(ValueError):
        convert_checkpoint(tmp_path / "maskformer_r50_torchvision.pth", "torchvision", "maskformer_r101")
