"""Backbone-only conversion of ImageNet-pretrained MiT encoders, and loading the result as `model.pretrained`.

Official (`mit_b*.pth`) and mmseg (`mit2mmseg` output) files are written from a random seglab backbone by inverse
mappings spelled out here from the source layouts; the mmseg attention is also checked against torch's
`nn.MultiheadAttention`, the module mmseg runs, so that a wrong `[q; k; v]` split cannot be mirrored by the
inverse mapping. Hugging Face files come from transformers' own `SegformerForImageClassification` with random
weights, compared stage by stage with its hidden states.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab import create_model
from seglab.checkpoint import read_checkpoint_meta, save_weights
from seglab.convert import convert_checkpoint

OFFICIAL_EPS = {"norm_eps": 1e-6, "patch_norm_eps": 1e-5, "sr_norm_eps": 1e-5}
MMSEG_EPS = {"norm_eps": 1e-6, "patch_norm_eps": 1e-6, "sr_norm_eps": 1e-6}
HF_EPS = {"norm_eps": 1e-5, "patch_norm_eps": 1e-5, "sr_norm_eps": 1e-5}
IMAGENET_CLASSES = 1000


def _randomize(module: nn.Module, seed: int) -> None:
    """Random values of a plausible scale everywhere, so that no LayerNorm scale is trivially one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.ndim == 1:  # LayerNorm scale
                t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=gen))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(math.prod(t.shape[1:])))


def _source_model(eps: dict[str, float], seed: int = 0, model_name: str = "segformer_b0") -> nn.Module:
    model = create_model(model_name, num_classes=3, **eps).eval()
    _randomize(model.backbone, seed)
    return model


def _imagenet_head(channels: int, seed: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(IMAGENET_CLASSES, channels, generator=gen) * 0.02, torch.zeros(IMAGENET_CLASSES)


def to_official(backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """seglab backbone -> official `mit_b*.pth` (no `backbone.` prefix, stages numbered 1..4, ImageNet `head`)."""
    out = {}
    for key, value in backbone.items():
        if m := re.fullmatch(r"stages\.(\d)\.patch_embed\.(.+)", key):
            out[f"patch_embed{int(m[1]) + 1}.{m[2]}"] = value
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.mlp\.dwconv\.(.+)", key):
            out[f"block{int(m[1]) + 1}.{m[2]}.mlp.dwconv.dwconv.{m[3]}"] = value
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(.+)", key):
            out[f"block{int(m[1]) + 1}.{m[2]}.{m[3]}"] = value
        elif m := re.fullmatch(r"stages\.(\d)\.norm\.(.+)", key):
            out[f"norm{int(m[1]) + 1}.{m[2]}"] = value
        else:
            raise AssertionError(f"test mapping does not know {key}")
    out["head.weight"], out["head.bias"] = _imagenet_head(backbone["stages.3.norm.weight"].shape[0])
    return out


def to_mmseg(backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """seglab backbone -> `mit2mmseg` output: `layers.{i}.{0,1,2}`, `in_proj` rows `[q; k; v]`, 1x1-conv FFN."""
    leaves = {"attn.proj": "attn.attn.out_proj", "mlp.fc1": "ffn.layers.0", "mlp.dwconv": "ffn.layers.1",
              "mlp.fc2": "ffn.layers.4"}
    out = {}
    for key, value in backbone.items():
        if m := re.fullmatch(r"stages\.(\d)\.patch_embed\.(proj|norm)\.(.+)", key):
            out[f"layers.{m[1]}.0.{'projection' if m[2] == 'proj' else 'norm'}.{m[3]}"] = value
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.attn\.q\.(weight|bias)", key):
            kv = backbone[f"stages.{m[1]}.blocks.{m[2]}.attn.kv.{m[3]}"]
            out[f"layers.{m[1]}.1.{m[2]}.attn.attn.in_proj_{m[3]}"] = torch.cat([value, kv])
        elif re.fullmatch(r"stages\.\d\.blocks\.\d+\.attn\.kv\.(weight|bias)", key):
            continue  # folded into in_proj with q
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            leaf = leaves.get(m[3], m[3])
            if leaf in ("ffn.layers.0", "ffn.layers.4") and m[4] == "weight":
                value = value[:, :, None, None]  # Linear (out, in) -> 1x1 conv (out, in, 1, 1)
            out[f"layers.{m[1]}.1.{m[2]}.{leaf}.{m[4]}"] = value
        elif m := re.fullmatch(r"stages\.(\d)\.norm\.(.+)", key):
            out[f"layers.{m[1]}.2.{m[2]}"] = value
        else:
            raise AssertionError(f"test mapping does not know {key}")
    return out


def _backbone_state(result) -> dict[str, torch.Tensor]:
    assert all(k.startswith("backbone.") for k in result.state_dict)
    return {k.removeprefix("backbone."): v for k, v in result.state_dict.items()}


def _load_backbone(result, model_name: str = "segformer_b0", seed: int = 1) -> nn.Module:
    """A fresh model (its own random init) with the converted backbone loaded strictly."""
    model = create_model(model_name, num_classes=3, **result.overrides).eval()
    _randomize(model.backbone, seed)
    model.backbone.load_state_dict(_backbone_state(result), strict=True)
    return model


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [t.shape for t in a] == [t.shape for t in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.fixture
def image() -> torch.Tensor:
    return torch.randn(1, 3, 64, 96)


@torch.no_grad()
def test_official_imagenet_encoder_converts_backbone_only(image):
    source = _source_model(OFFICIAL_EPS)
    sd = to_official(source.backbone.state_dict())
    for key in ("patch_embed1.proj.weight", "block1.0.attn.kv.weight", "block3.1.attn.sr.weight",
                "block2.0.mlp.dwconv.dwconv.bias", "norm4.weight"):
        assert key in sd
    assert "block4.0.attn.sr.weight" not in sd  # sr_ratio 1 in the last stage
    result = convert_checkpoint(sd, "official", "segformer_b0")
    assert result.backbone_only and result.num_classes is None
    assert result.overrides == OFFICIAL_EPS
    assert sorted(result.dropped) == ["head.bias", "head.weight"]
    assert len(result.state_dict) == len(sd) - 2
    model = _load_backbone(result)
    diff = _max_diff(model.backbone(image), source.backbone(image))
    assert diff <= 1e-4, diff


@torch.no_grad()
def test_official_backbone_keys_with_prefix_also_convert():
    """Encoder keys under `backbone.` (a segmentor checkpoint with its head removed) convert the same way."""
    sd = to_official(_source_model(OFFICIAL_EPS).backbone.state_dict())
    plain = convert_checkpoint(sd, "official", "segformer_b0")
    prefixed = convert_checkpoint({(k if k.startswith("head.") else f"backbone.{k}"): v for k, v in sd.items()},
                                  "official", "segformer_b0")
    assert prefixed.backbone_only and plain.state_dict.keys() == prefixed.state_dict.keys()
    assert all(torch.equal(plain.state_dict[k], prefixed.state_dict[k]) for k in plain.state_dict)


@torch.no_grad()
def test_mmseg_mit2mmseg_encoder_converts_backbone_only(image):
    source = _source_model(MMSEG_EPS, seed=2)
    sd = to_mmseg(source.backbone.state_dict())
    assert sd["layers.1.1.0.attn.attn.in_proj_weight"].shape == (3 * 64, 64)
    assert sd["layers.0.1.0.ffn.layers.0.weight"].shape == (128, 32, 1, 1)
    result = convert_checkpoint(sd, "mmseg", "segformer_b0")
    assert result.backbone_only and result.num_classes is None and result.dropped == []
    assert result.overrides == MMSEG_EPS  # no head option for a backbone
    model = _load_backbone(result)
    diff = _max_diff(model.backbone(image), source.backbone(image))
    assert diff <= 1e-4, diff

    # mmseg's attention is nn.MultiheadAttention over (query, reduced key/value): check one block against it
    block, prefix = model.backbone.stages[1].blocks[0], "layers.1.1.0"
    dim, heads, ratio = 64, 2, 4
    mha = nn.MultiheadAttention(dim, heads, batch_first=True).eval()
    mha.load_state_dict({"in_proj_weight": sd[f"{prefix}.attn.attn.in_proj_weight"],
                         "in_proj_bias": sd[f"{prefix}.attn.attn.in_proj_bias"],
                         "out_proj.weight": sd[f"{prefix}.attn.attn.out_proj.weight"],
                         "out_proj.bias": sd[f"{prefix}.attn.attn.out_proj.bias"]})
    height, width = 8, 12
    tokens = torch.randn(1, height * width, dim)
    grid = tokens.transpose(1, 2).reshape(1, dim, height, width)  # (B, N, C) -> (B, C, H, W)
    reduced = F.conv2d(grid, sd[f"{prefix}.attn.sr.weight"], sd[f"{prefix}.attn.sr.bias"], stride=ratio)
    reduced = F.layer_norm(reduced.flatten(2).transpose(1, 2), (dim,), sd[f"{prefix}.attn.norm.weight"],
                           sd[f"{prefix}.attn.norm.bias"], 1e-6)  # (B, C, h, w) -> (B, hw, C)
    expected, _ = mha(tokens, reduced, reduced, need_weights=False)
    torch.testing.assert_close(block.attn(tokens, height, width), expected, rtol=1e-5, atol=1e-5)


def _hf_classifier(seed: int = 5) -> nn.Module:
    """transformers' `nvidia/mit-b0` architecture (SegformerForImageClassification), random weights."""
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(
        hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
        num_labels=IMAGENET_CLASSES,
    )
    model = transformers.SegformerForImageClassification(config).eval()
    _randomize(model, seed)
    return model


@pytest.mark.reference
@torch.no_grad()
def test_hf_image_classifier_converts_backbone_only(image, tmp_path):
    hf = _hf_classifier()
    result = convert_checkpoint(hf.state_dict(), "hf", "segformer_b0")  # transformers >= 5 module names
    assert result.backbone_only and result.num_classes is None
    assert result.overrides == HF_EPS
    assert sorted(result.dropped) == ["classifier.bias", "classifier.weight"]
    model = _load_backbone(result)
    hidden = hf(pixel_values=image, output_hidden_states=True).hidden_states
    diff = _max_diff(model.backbone(image), list(hidden))
    assert diff <= 1e-4, diff

    hf.save_pretrained(tmp_path)  # hub names: segformer.encoder.block.{i}.{j}.attention.self.query ...
    from_hub = convert_checkpoint(tmp_path / "model.safetensors", "hf", "segformer_b0")
    bare = convert_checkpoint(hf.segformer.state_dict(), "hf", "segformer_b0")  # SegformerModel: no prefix, no head
    assert bare.dropped == []
    for other in (from_hub, bare):
        assert other.backbone_only and other.state_dict.keys() == result.state_dict.keys()
        assert all(torch.equal(other.state_dict[k], result.state_dict[k]) for k in result.state_dict)


def test_hf_segmentation_checkpoint_still_converts_whole():
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2],
                                          num_attention_heads=[1, 2, 5, 8], decoder_hidden_size=256, num_labels=4)
    result = convert_checkpoint(transformers.SegformerForSemanticSegmentation(config).state_dict(), "hf",
                                "segformer_b0")
    assert not result.backbone_only and result.num_classes == 4 and result.dropped == []
    assert any(k.startswith("decode_head.") for k in result.state_dict)


def _backbone_only_source(source: str) -> dict[str, torch.Tensor]:
    if source == "hf":
        return _hf_classifier().state_dict()
    backbone = _source_model(OFFICIAL_EPS if source == "official" else MMSEG_EPS).backbone.state_dict()
    return to_official(backbone) if source == "official" else to_mmseg(backbone)


@pytest.mark.parametrize("source", ["official", "mmseg", "hf"])
def test_unused_key_fails_loudly(source):
    sd = _backbone_only_source(source)
    sd["stem.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"not understood .*backbone only.*stem\.extra\.weight"):
        convert_checkpoint(sd, source, "segformer_b0")


def test_missing_key_and_wrong_variant_are_named():
    sd = _backbone_only_source("official")
    del sd["norm4.bias"]
    with pytest.raises(ValueError, match=r"the backbone of segformer_b0.*\n.*missing.*backbone\.stages\.3\.norm\.bias"):
        convert_checkpoint(sd, "official", "segformer_b0")
    with torch.device("meta"):
        b1 = create_model("segformer_b1").backbone.state_dict()
    sd = to_official({k: torch.zeros(v.shape) for k, v in b1.items()})
    with pytest.raises(ValueError, match=r"patch_embed1\.proj\.weight.*\(64, 3, 7, 7\).*\(32, 3, 7, 7\)"):
        convert_checkpoint(sd, "official", "segformer_b0")


def test_image_classifier_with_other_source_name_is_refused():
    """An official `mit_b0.pth` given as `--source hf` is not silently accepted."""
    with pytest.raises(ValueError, match=r"Hugging Face layout, backbone only.*patch_embed1\.proj\.weight"):
        convert_checkpoint(_backbone_only_source("official"), "hf", "segformer_b0")


@torch.no_grad()
def test_load_backbone_weights_from_converted_file(tmp_path, image):
    from seglab.checkpoint import load_backbone_weights

    source = _source_model(OFFICIAL_EPS, seed=4)
    result = convert_checkpoint(to_official(source.backbone.state_dict()), "official", "segformer_b0")
    path = tmp_path / "pretrained" / "mit_b0.safetensors"
    save_weights(path, result.state_dict, "segformer_b0", result.num_classes, result.overrides,
                 extra={"converted_from": "official", "backbone_only": "true"})
    meta = read_checkpoint_meta(path)
    assert meta.num_classes is None and meta.overrides == OFFICIAL_EPS and meta.extra["backbone_only"] == "true"

    model = create_model("segformer_b0", num_classes=7).eval()
    head_before = {k: v.clone() for k, v in model.decode_head.state_dict().items()}
    load_backbone_weights(model, path)
    assert all(torch.equal(v, result.state_dict[f"backbone.{k}"]) for k, v in model.backbone.state_dict().items())
    assert all(torch.equal(v, head_before[k]) for k, v in model.decode_head.state_dict().items())
    assert _max_diff(model.backbone(image), source.backbone(image)) <= 1e-4


def test_load_backbone_weights_refuses_what_does_not_fit(tmp_path):
    from seglab.checkpoint import load_backbone_weights

    model = create_model("segformer_b0", num_classes=7)
    raw = tmp_path / "mit_b0.pth"  # not converted: official key names
    torch.save(to_official(_source_model(OFFICIAL_EPS).backbone.state_dict()), raw)
    with pytest.raises(ValueError, match=r"(?s)missing.*stages\.0\.patch_embed\.proj\.weight.*seglab convert"):
        load_backbone_weights(model, raw)

    with torch.device("meta"):
        b1 = create_model("segformer_b1").backbone.state_dict()
    other = tmp_path / "mit_b1.safetensors"
    save_weights(other, {f"backbone.{k}": torch.zeros(v.shape) for k, v in b1.items()}, "segformer_b1", None)
    with pytest.raises(ValueError, match=r"shape mismatches.*patch_embed\.proj\.weight: file \(64, 3, 7, 7\)"):
        load_backbone_weights(model, other)


def test_cli_convert_writes_a_pretrained_file(tmp_path, capsys):
    from seglab.checkpoint import load_backbone_weights
    from seglab.cli.main import main

    source = _source_model(OFFICIAL_EPS, seed=6)
    src, dst = tmp_path / "mit_b0.pth", tmp_path / "pretrained" / "mit_b0.safetensors"
    torch.save(to_official(source.backbone.state_dict()), src)
    assert main(["convert", "--source", "official", "--model", "segformer_b0", str(src), str(dst)]) == 0
    assert "dropped 2 keys" in capsys.readouterr().out
    assert read_checkpoint_meta(dst).num_classes is None
    model = create_model("segformer_b0", num_classes=5)
    load_backbone_weights(model, dst)
    expected = source.backbone.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.backbone.state_dict().items())
