"""Backbone-only conversion of ImageNet checkpoints for `model.pretrained`: JAX `.npz` ViTs, SegViT from timm / mmseg /
JAX ViTs, MaskFormer from torchvision ResNets and official Swin checkpoints, and `img_size` through
`convert_checkpoint` and `seglab convert --img-size`. Sources are random tensors in the exact source layouts (timm's
ViT-T, torchvision's ResNet-50, seglab's Swin-T under the official names); models are built on the meta device."""

from __future__ import annotations

import re

import numpy as np
import pytest
import timm
import torch
import torchvision

import seglab
from seglab.backbones.vit import resample_pos_embed
from seglab.convert import convert_checkpoint
from seglab.convert.common import read_source
from seglab.convert.segvit import convert_segvit_official
from seglab.convert.setr import convert_setr_official
from seglab.convert.vit import convert_vit_jax_npz, convert_vit_timm

C, HEADS = 192, 3  # ViT-T


@pytest.fixture(scope="module")
def timm_vit() -> dict[str, torch.Tensor]:
    """timm `vit_tiny_patch16_224` (14 x 14 grid, final norm, 1000-class head) with random weights."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    state = model.state_dict()
    state["pos_embed"] = torch.randn_like(state["pos_embed"])  # timm initialises it small; make resampling visible
    return state


def timm_to_jax(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The AugReg `.npz` arrays of a timm ViT: the inverse of `convert_vit_jax_npz`'s mapping."""
    out = {"embedding/kernel": state["patch_embed.proj.weight"].permute(2, 3, 1, 0),  # OIHW -> HWIO
           "embedding/bias": state["patch_embed.proj.bias"], "cls": state["cls_token"],
           "Transformer/posembed_input/pos_embedding": state["pos_embed"],
           "Transformer/encoder_norm/scale": state["norm.weight"], "Transformer/encoder_norm/bias": state["norm.bias"],
           "head/kernel": state["head.weight"].T, "head/bias": state["head.bias"]}
    depth = len({m[1] for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    for i in range(depth):
        block, ours = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        for jax_norm, our_norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{block}{jax_norm}/scale"] = state[f"{ours}{our_norm}.weight"]
            out[f"{block}{jax_norm}/bias"] = state[f"{ours}{our_norm}.bias"]
        attn = block + "MultiHeadDotProductAttention_1/"
        weights = state[f"{ours}attn.qkv.weight"].chunk(3)
        biases = state[f"{ours}attn.qkv.bias"].chunk(3)
        for name, weight, bias in zip(("query", "key", "value"), weights, biases, strict=True):
            out[f"{attn}{name}/kernel"] = weight.T.reshape(C, HEADS, C // HEADS)
            out[f"{attn}{name}/bias"] = bias.reshape(HEADS, C // HEADS)
        out[f"{attn}out/kernel"] = state[f"{ours}attn.proj.weight"].T.reshape(HEADS, C // HEADS, C)
        out[f"{attn}out/bias"] = state[f"{ours}attn.proj.bias"]
        for r in (0, 1):
            out[f"{block}MlpBlock_3/Dense_{r}/kernel"] = state[f"{ours}mlp.fc{r + 1}.weight"].T
            out[f"{block}MlpBlock_3/Dense_{r}/bias"] = state[f"{ours}mlp.fc{r + 1}.bias"]
    return {k: v.detach().numpy().copy() for k, v in out.items()}


def timm_to_mmseg(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmseg `VisionTransformer` names of a timm ViT (as mmseg's `vit2mmseg` writes them; final norm as `ln1`)."""
    rules = [(r"patch_embed\.proj\.", "patch_embed.projection."), (r"blocks\.(\d+)\.norm([12])\.", r"layers.\1.ln\2."),
             (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"layers.\1.attn.attn.in_proj_\2"),
             (r"blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attn.attn.out_proj."),
             (r"blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."),
             (r"blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1."), (r"norm\.", "ln1.")]
    out = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        for pattern, repl in rules:
            key = re.sub(f"^{pattern}", repl, key)
        out[key] = value
    return out


def load_backbone_only(result, model_name: str) -> None:
    """Loads `result` into `create_model(model_name, **result.overrides)`: exactly the backbone keys are loaded."""
    assert result.backbone_only and result.num_classes is None
    with torch.device("meta"):
        model = seglab.create_model(model_name, **result.overrides)
    missing, unexpected = model.load_state_dict(result.state_dict, strict=False, assign=True)
    assert unexpected == []
    backbone = {f"backbone.{k}" for k in model.backbone.state_dict()}
    # BatchNorm fills a missing `num_batches_tracked` itself, without reporting it
    assert set(missing) == {k for k in model.state_dict() if k not in backbone and "num_batches_tracked" not in k}
    assert set(result.state_dict) == backbone


# ------------------------------------------------------------------------------------------------------- JAX .npz


def test_npz_reads_into_the_same_vit_as_timm(timm_vit, tmp_path):
    path = tmp_path / "ViT-Ti_16.npz"
    np.savez(path, **timm_to_jax(timm_vit))
    arrays, origin = read_source(path)
    assert origin == str(path) and arrays["embedding/kernel"].shape == (16, 16, 3, C)
    dropped: list[str] = []
    from_jax = convert_vit_jax_npz(arrays, dropped=dropped)
    from_timm = convert_vit_timm(timm_vit)
    assert from_jax.keys() == from_timm.keys() and sorted(dropped) == ["head/bias", "head/kernel"]
    for key, value in from_timm.items():
        torch.testing.assert_close(from_jax[key], value, rtol=0, atol=0, msg=key)

    # through convert_checkpoint: the same result as from timm's state dict
    result = convert_checkpoint(path, "official", "segmenter_vit_t")
    expected = convert_checkpoint(timm_vit, "official", "segmenter_vit_t")
    assert result.overrides == expected.overrides == {"interpolate_mode": "bilinear"}
    assert result.state_dict["backbone.pos_embed"].shape == (1, 1 + 32 * 32, C)  # 512 crops
    for key, value in expected.state_dict.items():
        torch.testing.assert_close(result.state_dict[key], value, rtol=0, atol=0, msg=key)
    load_backbone_only(result, "segmenter_vit_t")
    # and for SETR (no final norm: the encoder norm is dropped)
    tiny = {"vit": "t", "layers": (1, 3, 5, 7)}
    setr = convert_setr_official(read_source(path)[0], "setr_naive_vit_l", overrides=tiny, img_size=480)
    assert "Transformer/encoder_norm/scale" in setr.dropped and setr.overrides["img_size"] == 480
    assert setr.state_dict["backbone.pos_embed"].shape == (1, 1 + 30 * 30, C)
    load_backbone_only(setr, "setr_naive_vit_l")


def test_bad_npz_files_are_refused_naming_file_and_key(timm_vit, tmp_path):
    arrays = timm_to_jax(timm_vit)
    no_cls = tmp_path / "no_cls.npz"
    np.savez(no_cls, **{k: v for k, v in arrays.items() if k != "cls"})
    with pytest.raises(ValueError, match=rf"{re.escape(str(no_cls))}.*'cls' is missing"):
        convert_checkpoint(no_cls, "official", "segmenter_vit_t")
    not_vit = tmp_path / "not_vit.npz"
    np.savez(not_vit, weights=np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match=rf"{re.escape(str(not_vit))}.*not understood.*weights"):
        convert_checkpoint(not_vit, "official", "segvit_vit_b")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, names=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=rf"cannot read {re.escape(str(pickled))}.*allow_pickle=False.*\.npz archive"):
        read_source(pickled)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=rf"{re.escape(str(garbage))}.*expected an \.npz archive"):
        read_source(garbage)


# ------------------------------------------------------------------------------------------------------- SegViT


@pytest.mark.parametrize("layout", ["timm", "mmseg", "jax"])
def test_segvit_backbone_from_an_imagenet_vit(timm_vit, layout, tmp_path):
    if layout == "jax":
        np.savez(tmp_path / "vit.npz", **timm_to_jax(timm_vit))
        source = read_source(tmp_path / "vit.npz")[0]
    else:
        source = dict(timm_vit) if layout == "timm" else timm_to_mmseg(timm_vit)
    tiny = {"vit": "t", "out_indices": (5, 7, 11)}
    result = convert_segvit_official(source, "segvit_vit_b", overrides=tiny, img_size=480)
    assert result.overrides == {**tiny, "img_size": 480}
    final_norm = {"timm": ["norm.bias", "norm.weight"], "mmseg": ["ln1.bias", "ln1.weight"],
                  "jax": ["Transformer/encoder_norm/bias", "Transformer/encoder_norm/scale"]}[layout]
    classifier = {"timm": ["head.bias", "head.weight"], "mmseg": [], "jax": ["head/bias", "head/kernel"]}[layout]
    assert sorted(result.dropped) == sorted(final_norm + classifier)
    # bicubic, as mmseg's resize_pos_embed with SegViT's interpolate_mode='bicubic'
    pos = resample_pos_embed(timm_vit["pos_embed"], (14, 14), (30, 30), "bicubic")
    torch.testing.assert_close(result.state_dict["backbone.pos_embed"], pos)
    torch.testing.assert_close(result.state_dict["backbone.blocks.11.attn.qkv.weight"],
                               timm_vit["blocks.11.attn.qkv.weight"])
    assert "backbone.norm.weight" not in result.state_dict
    load_backbone_only(result, "segvit_vit_b")


def test_segvit_default_grid_and_shrunk(timm_vit):
    result = convert_segvit_official(dict(timm_vit), "segvit_shrunk_vit_l",
                                     overrides={"vit": "t", "out_indices": (3, 11), "shrink_index": 4})
    assert result.state_dict["backbone.pos_embed"].shape == (1, 1 + 40 * 40, C)  # the variant's 640 crop
    load_backbone_only(result, "segvit_shrunk_vit_l")


# ------------------------------------------------------------------------------------------------------- img_size


def test_img_size_through_convert_checkpoint_and_cli(timm_vit, tmp_path):
    result = convert_checkpoint(timm_vit, "official", "segmenter_vit_t", img_size=768)
    assert result.overrides == {"interpolate_mode": "bilinear", "img_size": 768}
    torch.testing.assert_close(result.state_dict["backbone.pos_embed"],
                               resample_pos_embed(timm_vit["pos_embed"], (14, 14), (48, 48), "bilinear"))
    load_backbone_only(result, "segmenter_vit_t")
    mmseg = convert_checkpoint(timm_to_mmseg(timm_vit), "mmseg", "segmenter_vit_t", img_size=480)
    assert mmseg.overrides == {"img_size": 480}  # mmseg's numerics: bicubic, the model's default
    torch.testing.assert_close(mmseg.state_dict["backbone.pos_embed"],
                               resample_pos_embed(timm_vit["pos_embed"], (14, 14), (30, 30), "bicubic"))

    from seglab.checkpoint import read_checkpoint_meta
    from seglab.cli.main import main

    src, dst = tmp_path / "vit_t.pth", tmp_path / "vit_t_480.safetensors"
    torch.save(timm_vit, src)
    assert main(["convert", "--source", "official", "--model", "segmenter_vit_t", "--img-size", "480",
                 str(src), str(dst)]) == 0
    meta = read_checkpoint_meta(dst)
    assert meta.overrides["img_size"] == 480 and meta.extra["backbone_only"] == "true"


def test_img_size_is_refused_outside_the_vit_families(timm_vit):
    with pytest.raises(ValueError, match="img_size applies to the ViT families.*maskformer_r50"):
        convert_checkpoint({"conv1.weight": torch.zeros(1)}, "official", "maskformer_r50", img_size=512)
    with pytest.raises(ValueError, match="positive int"):
        convert_checkpoint(timm_vit, "official", "segmenter_vit_t", img_size=0)


# ------------------------------------------------------------------------------------------------------- MaskFormer


@pytest.fixture(scope="module")
def resnet50() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).state_dict()


def test_maskformer_backbone_from_torchvision_resnet(resnet50):
    result = convert_checkpoint(resnet50, "official", "maskformer_r50")
    assert sorted(result.dropped) == ["fc.bias", "fc.weight"] and result.overrides == {}
    assert torch.equal(result.state_dict["backbone.layer3.5.bn2.running_var"], resnet50["layer3.5.bn2.running_var"])
    load_backbone_only(result, "maskformer_r50")
    with pytest.raises(ValueError, match="(?s)does not fit the backbone of maskformer_r101.*missing"):
        convert_checkpoint(resnet50, "official", "maskformer_r101")
    with pytest.raises(ValueError, match="not understood.*layer5.0.conv1.weight"):
        convert_checkpoint({**resnet50, "layer5.0.conv1.weight": torch.zeros(1)}, "official", "maskformer_r50")
    with pytest.raises(ValueError, match=r"expected an ImageNet Swin checkpoint"):
        convert_checkpoint(resnet50, "official", "maskformer_swin_t")


def official_swin_imagenet(model_name: str) -> dict[str, torch.Tensor]:
    """An official Swin ImageNet checkpoint (`swin_*_patch4_window*_224.pth` layout) with random weights, built from
    the seglab backbone's names: `stages` -> `layers` (merging at the end of stages 0-2 in both), no output norms, the
    classifier `norm` / `head`, and the window buffers."""
    with torch.device("meta"):
        backbone = seglab.create_model(model_name).backbone.state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in backbone.items():
        if key.startswith("out_norms."):
            continue
        state[key.replace("stages.", "layers.", 1)] = torch.randn(value.shape, generator=generator)
        if key.endswith("attn.relative_position_bias_table"):
            block = key.removesuffix("relative_position_bias_table").replace("stages.", "layers.", 1)
            state[block + "relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    width = backbone["out_norms.3.weight"].shape[0]
    state |= {"layers.0.blocks.1.attn_mask": torch.zeros(64, 49, 49), "norm.weight": torch.ones(width),
              "norm.bias": torch.zeros(width), "head.weight": torch.randn(1000, width), "head.bias": torch.zeros(1000)}
    return state


def test_maskformer_backbone_from_official_swin():
    source = official_swin_imagenet("maskformer_swin_t")
    result = convert_checkpoint({"model": source}, "official", "maskformer_swin_t")
    assert result.overrides == {}
    classifier_and_buffers = {"head.weight", "head.bias", "norm.weight", "norm.bias", "layers.0.blocks.1.attn_mask"}
    assert classifier_and_buffers <= set(result.dropped)
    assert torch.equal(result.state_dict["backbone.stages.2.blocks.5.attn.qkv.weight"],
                       source["layers.2.blocks.5.attn.qkv.weight"])
    assert torch.equal(result.state_dict["backbone.stages.0.downsample.reduction.weight"],
                       source["layers.0.downsample.reduction.weight"])
    assert torch.equal(result.state_dict["backbone.out_norms.1.weight"], torch.ones(192))  # LayerNorm initialisation
    assert torch.equal(result.state_dict["backbone.out_norms.1.bias"], torch.zeros(192))
    load_backbone_only(result, "maskformer_swin_t")
    with pytest.raises(ValueError, match="expected a torchvision ResNet state dict"):
        convert_checkpoint(source, "official", "maskformer_r50")
    with pytest.raises(ValueError, match="does not fit the backbone of maskformer_swin_s"):
        convert_checkpoint(source, "official", "maskformer_swin_s")
