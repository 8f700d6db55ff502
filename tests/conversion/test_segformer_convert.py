"""SegFormer checkpoint conversion from the official NVlabs and mmsegmentation layouts.

Synthetic checkpoints are generated from key/shape manifests written here from the original module definitions
(NVlabs `mix_transformer.py` + `segformer_head.py`; mmseg `mit.py` + `segformer_head.py`), filled with random
values. Each converted model is compared with a naive forward pass written directly on the source tensors, so a
wrong rename, split or block order in the converter cannot be mirrored by the test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seglab import create_model
from seglab.convert import SOURCES, convert_checkpoint

# official `mit_b*` classes / mmseg `segformer_mit-b*` configs, and the head width (decoder_params.embed_dim)
VARIANTS = {
    "b0": {"dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "heads": (1, 2, 5, 8), "head": 256},
    "b1": {"dims": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "heads": (1, 2, 5, 8), "head": 256},
}
SR_RATIOS = (8, 4, 2, 1)
PATCHES = ((7, 4), (3, 2), (3, 2), (3, 2))  # (kernel, stride) per stage
OFFICIAL_CONV_SEG_CHANNELS = 128  # `channels=128` in every official SegFormer config; conv_seg is unused
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (() if k == "num_batches_tracked" else (channels,)) for k in BN_KEYS}


def _pair(prefix: str, weight: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": weight, f"{prefix}.bias": (weight[0],)}


def official_manifest(variant: str, num_classes: int, head: int | None = None) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of an official `segformer.b*.*.pth` state dict."""
    cfg = VARIANTS[variant]
    head = head or cfg["head"]
    shapes: dict[str, tuple[int, ...]] = {}
    in_ch = 3
    for s, (dim, depth, sr) in enumerate(zip(cfg["dims"], cfg["depths"], SR_RATIOS, strict=True), start=1):
        kernel = PATCHES[s - 1][0]
        shapes |= _pair(f"backbone.patch_embed{s}.proj", (dim, in_ch, kernel, kernel))
        shapes |= _pair(f"backbone.patch_embed{s}.norm", (dim,))
        for j in range(depth):
            p = f"backbone.block{s}.{j}"
            shapes |= _pair(f"{p}.norm1", (dim,))
            shapes |= _pair(f"{p}.attn.q", (dim, dim))
            shapes |= _pair(f"{p}.attn.kv", (2 * dim, dim))
            shapes |= _pair(f"{p}.attn.proj", (dim, dim))
            if sr > 1:
                shapes |= _pair(f"{p}.attn.sr", (dim, dim, sr, sr))
                shapes |= _pair(f"{p}.attn.norm", (dim,))
            shapes |= _pair(f"{p}.norm2", (dim,))
            shapes |= _pair(f"{p}.mlp.fc1", (4 * dim, dim))
            shapes |= _pair(f"{p}.mlp.dwconv.dwconv", (4 * dim, 1, 3, 3))
            shapes |= _pair(f"{p}.mlp.fc2", (dim, 4 * dim))
        shapes |= _pair(f"backbone.norm{s}", (dim,))
        in_ch = dim
    shapes |= _pair("decode_head.conv_seg", (num_classes, OFFICIAL_CONV_SEG_CHANNELS, 1, 1))
    for s, dim in enumerate(cfg["dims"], start=1):
        shapes |= _pair(f"decode_head.linear_c{s}.proj", (head, dim))
    shapes["decode_head.linear_fuse.conv.weight"] = (head, 4 * head, 1, 1)
    shapes |= _bn("decode_head.linear_fuse.bn", head)
    shapes |= _pair("decode_head.linear_pred", (num_classes, head, 1, 1))
    return shapes


def mmseg_manifest(variant: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of an mmsegmentation `segformer_mit-b*` state dict."""
    cfg = VARIANTS[variant]
    head = cfg["head"]
    shapes: dict[str, tuple[int, ...]] = {}
    in_ch = 3
    for i, (dim, depth, sr) in enumerate(zip(cfg["dims"], cfg["depths"], SR_RATIOS, strict=True)):
        kernel = PATCHES[i][0]
        shapes |= _pair(f"backbone.layers.{i}.0.projection", (dim, in_ch, kernel, kernel))
        shapes |= _pair(f"backbone.layers.{i}.0.norm", (dim,))
        for j in range(depth):
            p = f"backbone.layers.{i}.1.{j}"
            shapes |= _pair(f"{p}.norm1", (dim,))
            shapes[f"{p}.attn.attn.in_proj_weight"] = (3 * dim, dim)
            shapes[f"{p}.attn.attn.in_proj_bias"] = (3 * dim,)
            shapes |= _pair(f"{p}.attn.attn.out_proj", (dim, dim))
            if sr > 1:
                shapes |= _pair(f"{p}.attn.sr", (dim, dim, sr, sr))
                shapes |= _pair(f"{p}.attn.norm", (dim,))
            shapes |= _pair(f"{p}.norm2", (dim,))
            shapes |= _pair(f"{p}.ffn.layers.0", (4 * dim, dim, 1, 1))
            shapes |= _pair(f"{p}.ffn.layers.1", (4 * dim, 1, 3, 3))
            shapes |= _pair(f"{p}.ffn.layers.4", (dim, 4 * dim, 1, 1))
        shapes |= _pair(f"backbone.layers.{i}.2", (dim,))
        in_ch = dim
    shapes |= _pair("decode_head.conv_seg", (num_classes, head, 1, 1))
    for i, dim in enumerate(cfg["dims"]):
        shapes[f"decode_head.convs.{i}.conv.weight"] = (head, dim, 1, 1)
        shapes |= _bn(f"decode_head.convs.{i}.bn", head)
    shapes["decode_head.fusion_conv.conv.weight"] = (head, 4 * head, 1, 1)
    shapes |= _bn("decode_head.fusion_conv.bn", head)
    return shapes


def random_state(manifest: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values of a plausible scale: norms near 1, small biases, fan-in scaled weights, positive variances."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in manifest.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("bias", "running_mean")):
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # LayerNorm / BatchNorm scale
            state[key] = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
    return state


def _ln(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def _bn_eval(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                        sd[f"{prefix}.bias"], training=False, eps=1e-5)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)


def _map(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return t.transpose(1, 2).reshape(t.shape[0], -1, height, width)  # (B, HW, C) -> (B, C, H, W)


def naive_official(sd: dict[str, torch.Tensor], variant: str, x: torch.Tensor) -> torch.Tensor:
    """NVlabs MixVisionTransformer + SegFormerHead, eval mode, on official-layout tensors."""
    cfg = VARIANTS[variant]
    feats = []
    for s, (depth, heads, sr) in enumerate(zip(cfg["depths"], cfg["heads"], SR_RATIOS, strict=True), start=1):
        kernel, stride = PATCHES[s - 1]
        x = F.conv2d(x, sd[f"backbone.patch_embed{s}.proj.weight"], sd[f"backbone.patch_embed{s}.proj.bias"],
                     stride, kernel // 2)
        b, c, h, w = x.shape
        t = _ln(_tokens(x), sd, f"backbone.patch_embed{s}.norm", 1e-5)
        for j in range(depth):
            p = f"backbone.block{s}.{j}"
            y = _ln(t, sd, f"{p}.norm1", 1e-6)
            q = F.linear(y, sd[f"{p}.attn.q.weight"], sd[f"{p}.attn.q.bias"])
            if sr > 1:
                reduced = F.conv2d(_map(y, h, w), sd[f"{p}.attn.sr.weight"], sd[f"{p}.attn.sr.bias"], sr)
                y = _ln(_tokens(reduced), sd, f"{p}.attn.norm", 1e-5)
            kv = F.linear(y, sd[f"{p}.attn.kv.weight"], sd[f"{p}.attn.kv.bias"])
            k, v = kv.reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
            q = q.reshape(b, -1, heads, c // heads).transpose(1, 2)
            attn = (q @ k.transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
            out = (attn @ v).transpose(1, 2).reshape(b, -1, c)
            t = t + F.linear(out, sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
            y = F.linear(_ln(t, sd, f"{p}.norm2", 1e-6), sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])
            y = F.conv2d(_map(y, h, w), sd[f"{p}.mlp.dwconv.dwconv.weight"], sd[f"{p}.mlp.dwconv.dwconv.bias"],
                         padding=1, groups=y.shape[-1])
            t = t + F.linear(F.gelu(_tokens(y)), sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
        x = _map(_ln(t, sd, f"backbone.norm{s}", 1e-6), h, w)
        feats.append(x)
    size = feats[0].shape[-2:]
    projected = []
    for s, f in enumerate(feats, start=1):
        y = F.linear(_tokens(f), sd[f"decode_head.linear_c{s}.proj.weight"], sd[f"decode_head.linear_c{s}.proj.bias"])
        projected.append(F.interpolate(_map(y, *f.shape[-2:]), size=size, mode="bilinear", align_corners=False))
    fused = F.conv2d(torch.cat(projected[::-1], dim=1), sd["decode_head.linear_fuse.conv.weight"])  # c4, c3, c2, c1
    fused = F.relu(_bn_eval(fused, sd, "decode_head.linear_fuse.bn"))
    return F.conv2d(fused, sd["decode_head.linear_pred.weight"], sd["decode_head.linear_pred.bias"])


def naive_mmseg(sd: dict[str, torch.Tensor], variant: str, x: torch.Tensor) -> torch.Tensor:
    """mmseg MixVisionTransformer + SegformerHead, eval mode, on mmseg-layout tensors."""
    cfg = VARIANTS[variant]
    feats = []
    for i, (depth, heads, sr) in enumerate(zip(cfg["depths"], cfg["heads"], SR_RATIOS, strict=True)):
        kernel, stride = PATCHES[i]
        x = F.conv2d(x, sd[f"backbone.layers.{i}.0.projection.weight"], sd[f"backbone.layers.{i}.0.projection.bias"],
                     stride, kernel // 2)
        b, c, h, w = x.shape
        t = _ln(_tokens(x), sd, f"backbone.layers.{i}.0.norm", 1e-6)
        for j in range(depth):
            p = f"backbone.layers.{i}.1.{j}"
            y = _ln(t, sd, f"{p}.norm1", 1e-6)
            kv = y
            if sr > 1:
                reduced = F.conv2d(_map(y, h, w), sd[f"{p}.attn.sr.weight"], sd[f"{p}.attn.sr.bias"], sr)
                kv = _ln(_tokens(reduced), sd, f"{p}.attn.norm", 1e-6)
            out, _ = F.multi_head_attention_forward(
                y.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), c, heads,
                sd[f"{p}.attn.attn.in_proj_weight"], sd[f"{p}.attn.attn.in_proj_bias"], None, None, False, 0.0,
                sd[f"{p}.attn.attn.out_proj.weight"], sd[f"{p}.attn.attn.out_proj.bias"], training=False,
                need_weights=False,
            )
            t = t + out.transpose(0, 1)
            y = _map(_ln(t, sd, f"{p}.norm2", 1e-6), h, w)
            y = F.conv2d(y, sd[f"{p}.ffn.layers.0.weight"], sd[f"{p}.ffn.layers.0.bias"])
            y = F.conv2d(y, sd[f"{p}.ffn.layers.1.weight"], sd[f"{p}.ffn.layers.1.bias"], padding=1, groups=y.shape[1])
            y = F.conv2d(F.gelu(y), sd[f"{p}.ffn.layers.4.weight"], sd[f"{p}.ffn.layers.4.bias"])
            t = t + _tokens(y)
        x = _map(_ln(t, sd, f"backbone.layers.{i}.2", 1e-6), h, w)
        feats.append(x)
    size = feats[0].shape[-2:]
    outs = []
    for i, f in enumerate(feats):  # ConvModule (conv, BN, ReLU) per stage, then resize
        y = F.relu(_bn_eval(F.conv2d(f, sd[f"decode_head.convs.{i}.conv.weight"]), sd, f"decode_head.convs.{i}.bn"))
        outs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
    fused = F.conv2d(torch.cat(outs, dim=1), sd["decode_head.fusion_conv.conv.weight"])  # input order c1..c4
    fused = F.relu(_bn_eval(fused, sd, "decode_head.fusion_conv.bn"))
    return F.conv2d(fused, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])


def _load(result, model_name: str) -> torch.nn.Module:
    model = create_model(model_name, num_classes=result.num_classes, **result.overrides).eval()
    model.load_state_dict(result.state_dict, strict=True)
    return model


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(1, 3, 64, 96)


@torch.no_grad()
def test_official_layout_matches_naive_official_forward(image):
    sd = random_state(official_manifest("b0", num_classes=5))
    result = convert_checkpoint(sd, "official", "segformer_b0")
    assert result.num_classes == 5
    assert sorted(result.dropped) == ["decode_head.conv_seg.bias", "decode_head.conv_seg.weight"]
    assert result.overrides == {"norm_eps": 1e-6, "patch_norm_eps": 1e-5, "sr_norm_eps": 1e-5}
    model = _load(result, "segformer_b0")
    assert model.decode_head.linear_fuse.norm.num_batches_tracked.item() == 1000
    expected = naive_official(sd, "b0", image)
    torch.testing.assert_close(model(image), expected, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_mmseg_layout_matches_naive_mmseg_forward(image):
    sd = random_state(mmseg_manifest("b0", num_classes=4), seed=1)
    result = convert_checkpoint(sd, "mmseg", "segformer_b0")
    assert result.num_classes == 4 and result.dropped == []
    assert result.overrides == {"norm_eps": 1e-6, "patch_norm_eps": 1e-6, "sr_norm_eps": 1e-6,
                                "head_stage_norm_act": True}
    model = _load(result, "segformer_b0")
    expected = naive_mmseg(sd, "b0", image)
    torch.testing.assert_close(model(image), expected, rtol=1e-4, atol=1e-4)


def test_mmseg_fuse_blocks_are_reversed_and_qkv_split():
    sd = random_state(mmseg_manifest("b0", num_classes=4))
    out = convert_checkpoint(sd, "mmseg", "segformer_b0").state_dict
    fuse_src = sd["decode_head.fusion_conv.conv.weight"].chunk(4, dim=1)  # mmseg: c1, c2, c3, c4
    fuse_dst = out["decode_head.linear_fuse.conv.weight"].chunk(4, dim=1)  # seglab: c4, c3, c2, c1
    for k in range(4):
        assert torch.equal(fuse_dst[k], fuse_src[3 - k])
    in_proj = sd["backbone.layers.1.1.0.attn.attn.in_proj_weight"]
    assert torch.equal(out["backbone.stages.1.blocks.0.attn.q.weight"], in_proj[:64])
    assert torch.equal(out["backbone.stages.1.blocks.0.attn.kv.weight"], in_proj[64:])


def test_reads_wrapped_torch_file_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    sd = random_state(official_manifest("b0", num_classes=3))
    torch.save({"meta": {"CLASSES": ("a", "b", "c"), "iter": 160000}, "state_dict": sd}, tmp_path / "ckpt.pth")
    save_file(sd, str(tmp_path / "ckpt.safetensors"))
    from_pth = convert_checkpoint(tmp_path / "ckpt.pth", "official", "segformer_b0")
    from_st = convert_checkpoint(str(tmp_path / "ckpt.safetensors"), "official", "segformer_b0")
    assert from_pth.state_dict.keys() == from_st.state_dict.keys()
    assert all(torch.equal(from_pth.state_dict[k], from_st.state_dict[k]) for k in from_pth.state_dict)


def test_unused_key_fails_loudly():
    sd = random_state(official_manifest("b0", num_classes=3))
    sd["backbone.block1.0.attn.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"backbone\.block1\.0\.attn\.extra\.weight"):
        convert_checkpoint(sd, "official", "segformer_b0")


def test_missing_key_is_named():
    sd = random_state(mmseg_manifest("b0", num_classes=3))
    del sd["backbone.layers.2.1.1.norm2.bias"]
    with pytest.raises(ValueError, match=r"missing.*backbone\.stages\.2\.blocks\.1\.norm2\.bias"):
        convert_checkpoint(sd, "mmseg", "segformer_b0")


def test_wrong_variant_names_key_and_shapes():
    sd = random_state(official_manifest("b1", num_classes=3))
    with pytest.raises(ValueError) as info:
        convert_checkpoint(sd, "official", "segformer_b0")
    message = str(info.value)
    assert "segformer_b0" in message
    assert "backbone.stages.0.patch_embed.proj.weight" in message and "backbone.patch_embed1.proj.weight" in message
    assert "(64, 3, 7, 7)" in message and "(32, 3, 7, 7)" in message


def test_unknown_source_and_model_are_refused():
    sd = random_state(official_manifest("b0", num_classes=3))
    with pytest.raises(ValueError, match="valid: " + ", ".join(SOURCES)):
        convert_checkpoint(sd, "detectron2", "segformer_b0")
    assert set(SOURCES) == {"hf", "official", "mmseg", "timm", "torchvision"}
    with pytest.raises(ValueError, match="no 'hf' converter for model 'segnext_t'"):
        convert_checkpoint(sd, "hf", "segnext_t")


def test_missing_batch_counter_and_custom_head_width(image):
    sd = random_state(official_manifest("b0", num_classes=3, head=64))
    del sd["decode_head.linear_fuse.bn.num_batches_tracked"]
    result = convert_checkpoint(sd, "official", "segformer_b0")
    assert result.overrides["head_channels"] == 64
    model = _load(result, "segformer_b0")
    with torch.no_grad():
        torch.testing.assert_close(model(image), naive_official(sd, "b0", image), rtol=1e-4, atol=1e-4)
