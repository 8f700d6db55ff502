"""ViT backbone against timm's `VisionTransformer` with the same random weights, and the mmseg / JAX converters.

timm (`dynamic_img_size=True`) resamples the position embedding bicubically with `antialias=True` (its
`resample_abs_pos_embed` default), which differs from plain bicubic even when upsampling (cubic coefficient -0.5
instead of -0.75); seglab reproduces it with `interpolate_antialias=True`. 224x320 (grid 14x20) and 160x288 (10x18)
are non-square grids that need resampling; 75x93 (with timm's `dynamic_img_pad=True`, right/bottom zero padding as
seglab's) gives a padded 5x6 grid.

The mmseg and JAX `.npz` state dicts are built from a timm model's weights by a re-layout written here, independently
of the converters, with the exact key names and shapes of those formats; the converted backbone must reproduce timm.
The `.npz` files are read back by timm's own JAX loader (`vision_transformer._load_weights`), which must recover the
timm model tensor for tensor; that loaded model is the reference.

ImageNet ViTs as a recipe's `model.pretrained` (`seglab convert --source official` for `segmenter_vit_*`, `segvit_*`,
`setr_*`, from a timm `.pth` or a JAX `.npz`) are compared with timm built for the converted grid through its own
pretrained-loading path (`checkpoint_filter_fn`), see `test_imagenet_vit_converts_to_pretrained_backbone`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from testkit import compare, timm_vit_features
from torch import nn

from seglab.backbones.vit import VIT_CONFIGS, VisionTransformer
from seglab.convert.common import read_source
from seglab.convert.vit import convert_vit_jax_npz, convert_vit_mmseg, convert_vit_timm

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.reference

OUT_INDICES = (3, 7, 11)


def _randomize(model: nn.Module, seed: int) -> None:
    """Random values everywhere, LayerNorm affines, biases, cls token and position embedding included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name in ("cls_token", "pos_embed"):
                t.copy_(0.5 * torch.randn(t.shape, generator=gen))
            elif name.endswith("bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.ndim == 1:  # LayerNorm scale
                t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(math.prod(t.shape[1:])))


def _timm_model(name: str, seed: int = 1) -> nn.Module:
    model = timm.create_model(name, pretrained=False, dynamic_img_size=True, dynamic_img_pad=True).eval()
    _randomize(model, seed)
    return model


def _ours(variant: str, state: dict[str, torch.Tensor], final_norm: bool = True) -> VisionTransformer:
    model = VisionTransformer(VIT_CONFIGS[variant], img_size=224, out_indices=OUT_INDICES, final_norm=final_norm,
                              interpolate_antialias=True).eval()
    model.load_state_dict(state, strict=True)
    return model


def _timm_features(reference: nn.Module, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """timm's raw block outputs at OUT_INDICES (NCHW) and its final-norm patch tokens as an NCHW map."""
    inter = reference.forward_intermediates(image, indices=list(OUT_INDICES), norm=False, intermediates_only=True)
    tokens = reference.forward_features(image)[:, reference.num_prefix_tokens:]  # (B, h*w, C), after `norm`
    grid = inter[-1].shape[-2:]
    normed = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], *grid)
    return inter, normed


def _assert_close(actual: list[torch.Tensor], expected: list[torch.Tensor], label: str,
                  indices: tuple[int, ...] = OUT_INDICES, pair: str = "vit/timm") -> None:
    assert len(actual) == len(expected) == len(indices)
    for index, a, e in zip(indices, actual, expected, strict=True):
        assert e.std() > 0.1
        compare(a, e, pair=f"{pair} {label} block {index}")


@pytest.mark.parametrize(
    ("name", "variant", "size"),
    [("vit_tiny_patch16_224", "t", (224, 320)), ("vit_tiny_patch16_224", "t", (75, 93)),
     ("vit_small_patch16_224", "s", (160, 288))],
)
@torch.no_grad()
def test_blocks_and_final_norm_match_timm(name, variant, size):
    reference = _timm_model(name)
    dropped: list[str] = []
    state = convert_vit_timm(reference.state_dict(), dropped=dropped)
    assert sorted(dropped) == ["head.bias", "head.weight"]
    image = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    inter, normed = _timm_features(reference, image)

    # final_norm=False: every chosen block's raw output
    plain = _ours(variant, convert_vit_timm(reference.state_dict(), final_norm=False), final_norm=False)
    actual = plain(image)
    assert actual[0].shape == (2, VIT_CONFIGS[variant].embed_dim, math.ceil(size[0] / 16), math.ceil(size[1] / 16))
    _assert_close(actual, inter, f"{name} {size}")

    # final_norm=True: only the last block's output changes, to timm's `norm`-ed tokens
    actual = _ours(variant, state)(image)
    _assert_close(actual, [*inter[:-1], normed], f"{name} {size} final_norm")


@torch.no_grad()
def test_no_resampling_at_the_trained_size():
    reference = _timm_model("vit_tiny_patch16_224")
    ours = _ours("t", convert_vit_timm(reference.state_dict()))
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    inter, normed = _timm_features(reference, image)
    _assert_close(ours(image), [*inter[:-1], normed], "224x224")
    assert ours.position_embedding((14, 14)) is ours.pos_embed


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_plain_resampling_matches_timm_resample_without_antialias(mode):
    """mmseg / Segmenter resampling (plain `F.interpolate`, align_corners False) = timm's helper with
    antialias=False; and it differs from the antialiased one."""
    from timm.layers import resample_abs_pos_embed

    model = VisionTransformer(VIT_CONFIGS["t"], interpolate_mode=mode)
    with torch.no_grad():
        model.pos_embed.normal_()
        for grid in [(10, 18), (20, 9)]:
            ours = model.position_embedding(grid)
            theirs = resample_abs_pos_embed(model.pos_embed, list(grid), old_size=[14, 14], interpolation=mode,
                                            antialias=False)
            assert ours.shape == (1, 1 + grid[0] * grid[1], 192)
            assert torch.allclose(ours, theirs, atol=1e-6)
            antialiased = resample_abs_pos_embed(model.pos_embed, list(grid), old_size=[14, 14], interpolation=mode)
            assert (ours - antialiased).abs().max() > 1e-3


def test_timm_converter_drops_classifier_and_distillation_slot():
    with torch.device("meta"):
        ours = VisionTransformer(VIT_CONFIGS["t"], final_norm=True)
    state = {k: torch.randn(v.shape) for k, v in ours.state_dict().items()}
    pos = state["pos_embed"]
    deit = {**state, "dist_token": torch.randn(1, 1, 192), "head.weight": torch.zeros(10, 192),
            "head.bias": torch.zeros(10), "head_dist.weight": torch.zeros(10, 192), "head_dist.bias": torch.zeros(10),
            "pos_embed": torch.cat([pos[:, :1], torch.full((1, 1, 192), 7.0), pos[:, 1:]], dim=1)}
    dropped: list[str] = []
    converted = convert_vit_timm(deit, dropped=dropped)
    assert set(dropped) == {"dist_token", "head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert torch.equal(converted["pos_embed"], pos)
    assert converted.keys() == state.keys()
    with pytest.raises(ValueError, match=r"blocks\.0\.ls1\.gamma"):
        convert_vit_timm({**state, "blocks.0.ls1.gamma": torch.ones(192)})
    with pytest.raises(ValueError, match="pos_embed"):
        convert_vit_timm({k: v for k, v in state.items() if k != "pos_embed"})


# --- mmseg layout --------------------------------------------------------------------------------------------------


def _timm_to_mmseg(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """timm names -> mmseg `VisionTransformer` names (`ln1` at top level is the final norm)."""
    block_parts = {"norm1": "ln1", "norm2": "ln2", "attn.qkv.weight": "attn.attn.in_proj_weight",
                   "attn.qkv.bias": "attn.attn.in_proj_bias", "attn.proj": "attn.attn.out_proj",
                   "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1"}
    out = {}
    for key, value in state.items():
        if key.startswith("head."):
            continue
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            for ours, theirs in block_parts.items():
                if rest.startswith(ours):
                    rest = theirs + rest[len(ours):]
                    break
            new = f"layers.{index}.{rest}"
        elif key.startswith("patch_embed.proj."):
            new = "patch_embed.projection." + key.rsplit(".", 1)[1]
        elif key.startswith("norm."):
            new = "ln1." + key.rsplit(".", 1)[1]
        else:
            new = key
        out[prefix + new] = value.clone()
    return out


@pytest.mark.parametrize("prefix", ["", "backbone."])
@torch.no_grad()
def test_mmseg_layout_converts_to_timm_numerics(prefix):
    reference = _timm_model("vit_tiny_patch16_224", seed=7)
    mmseg = _timm_to_mmseg(reference.state_dict(), prefix)
    assert f"{prefix}layers.11.attn.attn.in_proj_weight" in mmseg and mmseg[f"{prefix}ln1.weight"].shape == (192,)
    if prefix:
        mmseg["decode_head.conv_seg.weight"] = torch.zeros(3, 192, 1, 1)  # a whole segmentor: the head is ignored
    ours = _ours("t", convert_vit_mmseg(mmseg))
    image = torch.randn(1, 3, 160, 288, generator=torch.Generator().manual_seed(2))
    inter, normed = _timm_features(reference, image)
    _assert_close(ours(image), [*inter[:-1], normed], f"mmseg layout, prefix {prefix!r}")

    dropped: list[str] = []
    no_norm = convert_vit_mmseg(mmseg, final_norm=False, dropped=dropped)
    assert "norm.weight" not in no_norm and sorted(dropped) == ["ln1.bias", "ln1.weight"]
    with pytest.raises(ValueError, match=r"patch_embed\.norm\.weight"):
        convert_vit_mmseg({**mmseg, f"{prefix}patch_embed.norm.weight": torch.ones(192)})


# --- JAX / AugReg .npz layout --------------------------------------------------------------------------------------


def _timm_to_jax(state: dict[str, torch.Tensor], heads: int, prefix: str) -> dict[str, np.ndarray]:
    """timm tensors -> the google-research/vision_transformer `.npz` arrays (Flax kernels are (in, out))."""
    arr = {k: v.detach().numpy().copy() for k, v in state.items()}
    dim = arr["cls_token"].shape[-1]
    head_dim = dim // heads
    out = {
        "embedding/kernel": arr["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": arr["patch_embed.proj.bias"],
        "cls": arr["cls_token"],
        "Transformer/posembed_input/pos_embedding": arr["pos_embed"],
        "Transformer/encoder_norm/scale": arr["norm.weight"],
        "Transformer/encoder_norm/bias": arr["norm.bias"],
        "head/kernel": arr["head.weight"].T,
        "head/bias": arr["head.bias"],
        "pre_logits/kernel": np.zeros((dim, dim), np.float32),
        "pre_logits/bias": np.zeros(dim, np.float32),
    }
    depth = len({k.split(".")[1] for k in arr if k.startswith("blocks.")})
    for i in range(depth):
        b, j = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[f"{j}LayerNorm_0/scale"], out[f"{j}LayerNorm_0/bias"] = arr[b + "norm1.weight"], arr[b + "norm1.bias"]
        out[f"{j}LayerNorm_2/scale"], out[f"{j}LayerNorm_2/bias"] = arr[b + "norm2.weight"], arr[b + "norm2.bias"]
        for n, name in enumerate(("query", "key", "value")):
            w = arr[b + "attn.qkv.weight"][n * dim:(n + 1) * dim]  # (out = heads * d, in = C)
            out[f"{j}MultiHeadDotProductAttention_1/{name}/kernel"] = w.T.reshape(dim, heads, head_dim)
            out[f"{j}MultiHeadDotProductAttention_1/{name}/bias"] = (
                arr[b + "attn.qkv.bias"][n * dim:(n + 1) * dim].reshape(heads, head_dim))
        out[f"{j}MultiHeadDotProductAttention_1/out/kernel"] = arr[b + "attn.proj.weight"].T.reshape(heads, head_dim,
                                                                                                   dim)
        out[f"{j}MultiHeadDotProductAttention_1/out/bias"] = arr[b + "attn.proj.bias"]
        for r in (0, 1):
            out[f"{j}MlpBlock_3/Dense_{r}/kernel"] = arr[b + f"mlp.fc{r + 1}.weight"].T
            out[f"{j}MlpBlock_3/Dense_{r}/bias"] = arr[b + f"mlp.fc{r + 1}.bias"]
    return {prefix + k: np.ascontiguousarray(v) for k, v in out.items()}


def _save_npz_read_by_timm(arrays: dict[str, np.ndarray], path, name: str, like: nn.Module) -> nn.Module:
    """Writes `arrays` as a `.npz` and loads it with timm's own JAX loader (`vision_transformer._load_weights`, what
    `timm.create_model(..., pretrained=True)` runs on the google-research files) into a fresh `name`; the result must
    be `like` tensor for tensor, so the file is in the layout timm reads."""
    from timm.models.vision_transformer import _load_weights

    np.savez(path, **arrays)
    loaded = timm.create_model(name, pretrained=False, dynamic_img_size=True, dynamic_img_pad=True).eval()
    _load_weights(loaded, str(path))
    for key, value in like.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), f"timm's npz loader read {key} differently"
    return loaded


@pytest.mark.parametrize("prefix", ["", "opt/target/"])
@torch.no_grad()
def test_jax_npz_layout_converts_to_timm_numerics(prefix, tmp_path):
    source = _timm_model("vit_small_patch16_224", seed=9)
    arrays = _timm_to_jax(source.state_dict(), heads=6, prefix=prefix)
    assert arrays[f"{prefix}Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape == (384, 6,
                                                                                                            64)
    assert arrays[f"{prefix}Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel"].shape == (6, 64,
                                                                                                          384)
    assert arrays[f"{prefix}embedding/kernel"].shape == (16, 16, 3, 384)
    reference = _save_npz_read_by_timm(arrays, tmp_path / "vit.npz", "vit_small_patch16_224", like=source)
    dropped: list[str] = []
    ours = _ours("s", convert_vit_jax_npz(read_source(tmp_path / "vit.npz")[0], dropped=dropped))
    assert sorted(dropped) == ["head/bias", "head/kernel", "pre_logits/bias", "pre_logits/kernel"]
    image = torch.randn(1, 3, 224, 320, generator=torch.Generator().manual_seed(4))
    inter, normed = _timm_features(reference, image)
    _assert_close(ours(image), [*inter[:-1], normed], f"prefix {prefix!r}", pair="vit/timm-npz")

    with pytest.raises(ValueError, match="LayerNorm_2/scale"):
        convert_vit_jax_npz({k: v for k, v in arrays.items() if not k.endswith("encoderblock_3/LayerNorm_2/scale")})
    with pytest.raises(ValueError, match="not understood"):
        convert_vit_jax_npz({**arrays, f"{prefix}Transformer/encoderblock_0/extra/kernel": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="big-vision"):
        convert_vit_jax_npz({**arrays, f"{prefix}Transformer/encoderblock/LayerNorm_0/scale": np.zeros(3)})


# --- ImageNet ViTs through `seglab convert --source official` (a recipe's `model.pretrained`) ---------------------


def _reference_at(source: nn.Module, name: str, img_size: int, mode: str, cls_token: bool) -> nn.Module:
    """timm's `name` built for `img_size`, holding `source`'s weights as timm's own pretrained loading puts them there
    (`checkpoint_filter_fn` resamples the position embedding) with the seglab model's resampling: `mode`, no
    antialiasing. Without `cls_token` it is timm's `class_token=False` ViT holding the patch slots of the position
    embedding: what mmseg's ViT computes when it drops the class token after adding the position embedding."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    options = {} if cls_token else {"class_token": False, "global_pool": "avg", "fc_norm": False}
    reference = timm.create_model(name, pretrained=False, img_size=img_size, dynamic_img_size=True,
                                  dynamic_img_pad=True, **options).eval()
    state = dict(source.state_dict())
    if not cls_token:
        del state["cls_token"]
        state["pos_embed"] = state["pos_embed"][:, 1:]
    reference.load_state_dict(checkpoint_filter_fn(state, reference, interpolation=mode, antialias=False),
                              strict=True)
    return reference


@pytest.mark.parametrize(
    ("timm_name", "model_name", "file_format"),
    [("vit_tiny_patch16_224", "segmenter_vit_t", "pth"), ("vit_small_patch16_224", "segmenter_vit_s", "npz"),
     pytest.param("vit_base_patch16_224", "segvit_vit_b", "npz", marks=pytest.mark.slow),
     pytest.param("vit_large_patch16_224", "setr_naive_vit_l", "pth", marks=pytest.mark.slow)],
)
@torch.no_grad()
def test_imagenet_vit_converts_to_pretrained_backbone(timm_name, model_name, file_format, tmp_path, monkeypatch):
    """A timm ViT (`.pth` state dict, or the JAX `.npz` that timm's loader reads as the same model) converted for
    `img_size=320` (grid 14 -> 20, resampled by the converter with the model's mode), written as `seglab convert`
    writes it and loaded by `model.pretrained`'s loader, reproduces timm's block outputs at 75x93 (grid 20 -> 5x6 at
    run time). timm's run-time resampling is its antialiased bicubic; the seglab families resample plainly with their
    own mode (mmseg's `resize_pos_embed`), so timm is given that: `resample_abs_pos_embed` with the model's mode and
    `antialias=False`, the function the reference's `checkpoint_filter_fn` uses too."""
    from functools import partial

    import timm.models.vision_transformer as timm_vit
    from timm.layers import resample_abs_pos_embed

    from seglab import create_model
    from seglab.checkpoint import load_backbone_weights, save_weights
    from seglab.convert import convert_checkpoint

    source = _timm_model(timm_name, seed=11)
    if file_format == "pth":
        src = tmp_path / f"{timm_name}.pth"
        torch.save(source.state_dict(), src)
    else:
        src = tmp_path / f"{timm_name}.npz"
        _save_npz_read_by_timm(_timm_to_jax(source.state_dict(), heads=source.blocks[0].attn.num_heads, prefix=""),
                               src, timm_name, like=source)
    result = convert_checkpoint(src, "official", model_name, img_size=320)
    assert result.backbone_only and result.num_classes is None and result.overrides["img_size"] == 320
    assert {"head.weight", "head.bias"} <= set(result.dropped) or {"head/kernel", "head/bias"} <= set(result.dropped)
    save_weights(tmp_path / "backbone.safetensors", result.state_dict, model_name, None, result.overrides,
                 extra={"converted_from": "official", "backbone_only": "true"})
    ours = create_model(model_name, num_classes=5, **result.overrides).eval()
    load_backbone_weights(ours, tmp_path / "backbone.safetensors")
    backbone = ours.backbone
    assert backbone.grid_size == (20, 20) and not backbone.interpolate_antialias

    mode = backbone.interpolate_mode
    monkeypatch.setattr(timm_vit, "resample_abs_pos_embed",
                        partial(resample_abs_pos_embed, interpolation=mode, antialias=False))
    reference = _reference_at(source, timm_name, 320, mode, cls_token=backbone.with_cls_token)
    image = torch.randn(1, 3, 75, 93, generator=torch.Generator().manual_seed(5))
    expected = timm_vit_features(reference, image, backbone)
    actual = backbone(image)
    assert actual[0].shape[-2:] == (5, 6)
    family = model_name.split("_")[0]
    _assert_close(actual, expected, f"{model_name} ({timm_name}, img_size 320) at 75x93", indices=backbone.out_indices,
                  pair=f"{family}/timm" + ("-npz" if file_format == "npz" else ""))
