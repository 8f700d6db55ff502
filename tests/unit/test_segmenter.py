import math
from pathlib import Path

import pytest
import torch
from torch import nn

import seglab.models.segmenter  # noqa: F401  (registers the segmenter_* models)
from seglab.backbones.vit import VIT_CONFIGS, VisionTransformer, ViTConfig
from seglab.heads.segmenter import LinearHead, MaskTransformerHead
from seglab.models.encoder_decoder import EncoderDecoder
from seglab.models.segmenter import PAPER_ENCODER_PARAMS_M, SEGMENTER_VARIANTS
from seglab.registry import create_model, get_entry

NAMES = ["segmenter_vit_t", "segmenter_vit_s", "segmenter_vit_b", "segmenter_vit_l", "segmenter_vit_s_linear"]


def tiny_backbone() -> VisionTransformer:
    return VisionTransformer(ViTConfig(64, 2, 2), img_size=64, out_indices=(1,), final_norm=True)


def tiny_model(linear: bool = False, num_classes: int = 5) -> EncoderDecoder:
    head = LinearHead(64, num_classes) if linear else MaskTransformerHead(64, num_classes, embed_dim=64, num_heads=2)
    return EncoderDecoder(tiny_backbone(), head, num_classes=num_classes, output_stride=16)


@pytest.mark.parametrize("linear", [False, True])
def test_odd_size_shapes(linear):
    torch.manual_seed(0)
    model = tiny_model(linear).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 77, 50))
    assert out.shape == (2, 5, 5, 4)  # ceil(77 / 16), ceil(50 / 16)
    assert torch.isfinite(out).all()


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _block(x, block, heads):
    """A pre-norm transformer block from its formula with plain tensor ops."""
    batch, length, dim = x.shape
    h = _layer_norm(x, block.norm1.weight, block.norm1.bias, block.norm1.eps)
    q, k, v = (h @ block.attn.qkv.weight.T + block.attn.qkv.bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, length, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(batch, length, dim)
    x = x + out @ block.attn.proj.weight.T + block.attn.proj.bias
    h = _layer_norm(x, block.norm2.weight, block.norm2.bias, block.norm2.eps)
    h = h @ block.mlp.fc1.weight.T + block.mlp.fc1.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return x + h @ block.mlp.fc2.weight.T + block.mlp.fc2.bias


def mask_transformer_reference(head: MaskTransformerHead, feature: torch.Tensor, heads: int) -> torch.Tensor:
    """Segmenter's mask transformer written out: tokens + class embeddings through the blocks, cosine-similarity
    masks, LayerNorm over the classes."""
    batch, _, height, width = feature.shape
    tokens = feature.flatten(2).transpose(1, 2) @ head.dec_proj.weight.T + head.dec_proj.bias
    x = torch.cat([tokens, head.cls_emb.expand(batch, -1, -1)], dim=1)
    for layer in head.layers:
        x = _block(x, layer, heads)
    x = _layer_norm(x, head.decoder_norm.weight, head.decoder_norm.bias, head.decoder_norm.eps)
    k = head.num_classes
    patches = x[:, :-k] @ head.patch_proj.weight.T
    classes = x[:, -k:] @ head.classes_proj.weight.T
    patches = patches / patches.norm(dim=-1, keepdim=True)
    classes = classes / classes.norm(dim=-1, keepdim=True)
    masks = _layer_norm(patches @ classes.transpose(1, 2), head.mask_norm.weight, head.mask_norm.bias,
                        head.mask_norm.eps)
    return masks.permute(0, 2, 1).reshape(batch, k, height, width)


def test_mask_transformer_matches_formula():
    torch.manual_seed(0)
    head = MaskTransformerHead(48, 7, embed_dim=64, num_heads=4).eval()
    for p in head.parameters():  # move every parameter off its init so that each one matters
        p.data.add_(0.1 * torch.randn_like(p))
    feature = torch.randn(2, 48, 5, 3)
    with torch.no_grad():
        ours = head([feature])
        ref = mask_transformer_reference(head, feature, heads=4)
    assert ours.shape == (2, 7, 5, 3)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_mask_transformer_structure():
    head = MaskTransformerHead(192, 150, embed_dim=192, num_heads=3)
    assert len(head.layers) == 2
    assert [layer.drop_path.drop_prob for layer in head.layers] == pytest.approx([0.0, 0.1])
    assert head.patch_proj.bias is None and head.classes_proj.bias is None
    assert head.mask_norm.normalized_shape == (150,) and head.cls_emb.shape == (1, 150, 192)
    assert head.layers[0].mlp.fc1.out_features == 4 * 192 and head.layers[0].attn.num_heads == 3


def test_linear_head_is_a_per_token_linear():
    torch.manual_seed(0)
    head = LinearHead(64, 9)
    nn.init.normal_(head.classifier.bias)
    linear = nn.Linear(64, 9)
    linear.weight.data.copy_(head.classifier.weight[:, :, 0, 0])
    linear.bias.data.copy_(head.classifier.bias)
    feature = torch.randn(2, 64, 4, 6)
    with torch.no_grad():
        ref = linear(feature.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 9, 4, 6)
        torch.testing.assert_close(head([feature]), ref, rtol=0, atol=1e-5)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    for linear in (False, True):
        model = tiny_model(linear).train()
        logits, aux = model.forward_train(torch.randn(2, 3, 40, 56))
        assert logits.shape == (2, 5, 3, 4) and aux == []
        logits.square().mean().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing


def _vit_params(c: int, depth: int, grid: int) -> int:
    block = 2 * 2 * c + (3 * c * c + 3 * c) + (c * c + c) + (4 * c * c + 4 * c) + (4 * c * c + c)
    return (3 * 16 * 16 * c + c) + c + (1 + grid * grid) * c + depth * block + 2 * c


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts(name):
    variant = name.split("_")[2]
    config = VIT_CONFIGS[variant]
    c, k = config.embed_dim, 150
    with torch.device("meta"):
        model = create_model(name)
    encoder = _vit_params(c, config.depth, SEGMENTER_VARIANTS[variant].crop // 16)
    if name.endswith("_linear"):
        head = c * k + k
    else:
        block = 12 * c * c + 13 * c
        head = (c * c + c) + k * c + 2 * block + 2 * c + 2 * c * c + 2 * k
    assert sum(p.numel() for p in model.backbone.parameters()) == encoder
    assert sum(p.numel() for p in model.parameters()) == encoder + head
    # the paper's Table 1 gives the encoders' sizes (ViT-L: 307M is the ViT paper's figure, ours 304.7M at 640 px)
    paper = PAPER_ENCODER_PARAMS_M[variant]
    assert abs(encoder / 1e6 - paper) <= max(0.5, 0.01 * paper)
    assert get_entry(name).published_params_m is None
    assert model.output_stride == 16 and model.num_classes == 150


def test_registered_defaults():
    with torch.device("meta"):
        model = create_model("segmenter_vit_l", num_classes=21)
        small = create_model("segmenter_vit_s", img_size=384, norm_eps=1e-5)
    backbone = model.backbone
    assert backbone.grid_size == (40, 40) and backbone.with_cls_token and backbone.norm is not None
    assert backbone.out_indices == (23,) and backbone.interpolate_mode == "bicubic"
    assert backbone.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert model.decode_head.cls_emb.shape == (1, 21, 1024) and model.decode_head.layers[0].attn.num_heads == 16
    assert small.backbone.grid_size == (24, 24) and small.backbone.norm.eps == 1e-5
    with pytest.raises(TypeError, match="head_layers"):
        create_model("segmenter_vit_s_linear", head_layers=3)


def test_configs():
    from seglab.config import load_config
    from seglab.registry import resolve_options

    root = Path(__file__).resolve().parents[2] / "configs" / "segmenter"
    files = sorted(p for p in root.glob("*_ade20k-*.yaml") if not p.name.startswith("_"))  # the ADE20K recipes
    assert [p.name for p in files] == [
        "segmenter_vit_b_mask_ade20k-512_160k.yaml", "segmenter_vit_l_mask_ade20k-640_160k.yaml",
        "segmenter_vit_s_linear_ade20k-512_160k.yaml", "segmenter_vit_s_mask_ade20k-512_160k.yaml",
        "segmenter_vit_t_mask_ade20k-512_160k.yaml",
    ]
    for path in files:
        config = load_config(path)
        resolve_options(config.model.name, dict(config.model.overrides))
        crop = 640 if "vit_l" in path.name else 512
        assert config.model.name in NAMES and config.model.num_classes == 150
        assert (config.optim.name, config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (
            "sgd", 0.001, 0.9, 0.0)
        assert (config.schedule.iters, config.schedule.power, config.schedule.warmup_iters) == (160000, 0.9, 0)
        assert config.data.mean == (127.5,) * 3 and config.data.std == (127.5,) * 3
        assert config.data.train_transform.crop_size == (crop, crop)
        assert (config.eval.mode, config.eval.crop_size, config.eval.stride) == (
            "slide", (crop, crop), (crop - 32, crop - 32))


# --- checkpoint conversion -------------------------------------------------------------------------------------------


def _official_block(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.norm1.weight": (c,), f"{prefix}.norm1.bias": (c,), f"{prefix}.attn.qkv.weight": (3 * c, c),
            f"{prefix}.attn.qkv.bias": (3 * c,), f"{prefix}.attn.proj.weight": (c, c), f"{prefix}.attn.proj.bias": (c,),
            f"{prefix}.norm2.weight": (c,), f"{prefix}.norm2.bias": (c,), f"{prefix}.mlp.fc1.weight": (4 * c, c),
            f"{prefix}.mlp.fc1.bias": (4 * c,), f"{prefix}.mlp.fc2.weight": (c, 4 * c), f"{prefix}.mlp.fc2.bias": (c,)}


def _mmseg_block(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.ln1.weight": (c,), f"{prefix}.ln1.bias": (c,), f"{prefix}.attn.attn.in_proj_weight": (3 * c, c),
            f"{prefix}.attn.attn.in_proj_bias": (3 * c,), f"{prefix}.attn.attn.out_proj.weight": (c, c),
            f"{prefix}.attn.attn.out_proj.bias": (c,), f"{prefix}.ln2.weight": (c,), f"{prefix}.ln2.bias": (c,),
            f"{prefix}.ffn.layers.0.0.weight": (4 * c, c), f"{prefix}.ffn.layers.0.0.bias": (4 * c,),
            f"{prefix}.ffn.layers.1.weight": (c, 4 * c), f"{prefix}.ffn.layers.1.bias": (c,)}


def official_manifest(variant: str, num_classes: int, linear: bool = False) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of rstrudel/segmenter's `Segmenter` (segm/model/vit.py, decoder.py) for a ViT-`variant`."""
    config = VIT_CONFIGS[variant]
    c, k, grid = config.embed_dim, num_classes, SEGMENTER_VARIANTS[variant].crop // 16
    keys = {"encoder.cls_token": (1, 1, c), "encoder.pos_embed": (1, 1 + grid * grid, c),
            "encoder.patch_embed.proj.weight": (c, 3, 16, 16), "encoder.patch_embed.proj.bias": (c,)}
    for i in range(config.depth):
        keys.update(_official_block(f"encoder.blocks.{i}", c))
    keys.update({"encoder.norm.weight": (c,), "encoder.norm.bias": (c,), "encoder.head.weight": (1000, c),
                 "encoder.head.bias": (1000,)})
    if linear:
        keys.update({"decoder.head.weight": (k, c), "decoder.head.bias": (k,)})
        return keys
    keys.update({"decoder.cls_emb": (1, k, c)})
    for i in range(2):
        keys.update(_official_block(f"decoder.blocks.{i}", c))
    keys.update({"decoder.proj_dec.weight": (c, c), "decoder.proj_dec.bias": (c,), "decoder.proj_patch": (c, c),
                 "decoder.proj_classes": (c, c), "decoder.decoder_norm.weight": (c,), "decoder.decoder_norm.bias": (c,),
                 "decoder.mask_norm.weight": (k,), "decoder.mask_norm.bias": (k,)})
    return keys


def mmseg_manifest(variant: str, num_classes: int, linear: bool = False) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of mmseg's Segmenter (`VisionTransformer` + `SegmenterMaskTransformerHead` or `FCNHead`)."""
    config = VIT_CONFIGS[variant]
    c, k, grid = config.embed_dim, num_classes, SEGMENTER_VARIANTS[variant].crop // 16
    keys = {"backbone.cls_token": (1, 1, c), "backbone.pos_embed": (1, 1 + grid * grid, c),
            "backbone.patch_embed.projection.weight": (c, 3, 16, 16), "backbone.patch_embed.projection.bias": (c,)}
    for i in range(config.depth):
        keys.update(_mmseg_block(f"backbone.layers.{i}", c))
    keys.update({"backbone.ln1.weight": (c,), "backbone.ln1.bias": (c,),
                 "decode_head.conv_seg.weight": (k, c, 1, 1), "decode_head.conv_seg.bias": (k,)})
    if linear:
        return keys
    keys.update({"decode_head.cls_emb": (1, k, c), "decode_head.dec_proj.weight": (c, c),
                 "decode_head.dec_proj.bias": (c,)})
    for i in range(2):
        keys.update(_mmseg_block(f"decode_head.layers.{i}", c))
    keys.update({"decode_head.decoder_norm.weight": (c,), "decode_head.decoder_norm.bias": (c,),
                 "decode_head.patch_proj.weight": (c, c), "decode_head.classes_proj.weight": (c, c),
                 "decode_head.mask_norm.weight": (k,), "decode_head.mask_norm.bias": (k,)})
    return keys


def _tensors(manifest, device="meta", seed=0):
    generator = torch.Generator().manual_seed(seed)
    if device == "meta":
        return {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}
    return {k: 0.05 * torch.randn(shape, generator=generator) for k, shape in manifest.items()}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("source", ["official", "mmseg"])
def test_manifests_convert(name, source):
    from seglab.convert.segmenter import convert_segmenter_mmseg, convert_segmenter_official

    variant, linear = name.split("_")[2], name.endswith("_linear")
    manifest = (official_manifest if source == "official" else mmseg_manifest)(variant, 150, linear)
    convert = convert_segmenter_official if source == "official" else convert_segmenter_mmseg
    result = convert(_tensors(manifest), name)
    assert result.num_classes == 150 and not result.backbone_only
    assert result.overrides == ({"norm_eps": 1e-5, "interpolate_mode": "bilinear"} if source == "official" else {})
    with torch.device("meta"):
        model = create_model(name, num_classes=150, **result.overrides)
    expected = model.state_dict()
    assert list(result.state_dict) == list(expected)
    assert all(result.state_dict[k].shape == v.shape for k, v in expected.items())
    dropped = set(result.dropped)
    if source == "official":
        assert dropped == {"encoder.head.weight", "encoder.head.bias"}
    else:
        assert dropped == (set() if linear else {"decode_head.conv_seg.weight", "decode_head.conv_seg.bias"})


def _official_decoder(sd: dict, feature: torch.Tensor, heads: int, eps: float = 1e-5) -> torch.Tensor:
    """rstrudel/segmenter `MaskTransformer.forward` written out on its own (official-named) tensors."""
    batch, c, height, width = feature.shape
    x = feature.flatten(2).transpose(1, 2) @ sd["decoder.proj_dec.weight"].T + sd["decoder.proj_dec.bias"]
    x = torch.cat([x, sd["decoder.cls_emb"].expand(batch, -1, -1)], dim=1)
    for i in range(2):
        p = f"decoder.blocks.{i}."
        block = nn.Module()
        block.norm1 = nn.LayerNorm(c, eps=eps)
        block.norm2 = nn.LayerNorm(c, eps=eps)
        block.attn, block.mlp = nn.Module(), nn.Module()
        block.attn.qkv, block.attn.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        block.mlp.fc1, block.mlp.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        block.load_state_dict({k.removeprefix(p): v for k, v in sd.items() if k.startswith(p)})
        x = _block(x, block, heads)
    x = _layer_norm(x, sd["decoder.decoder_norm.weight"], sd["decoder.decoder_norm.bias"], eps)
    k = sd["decoder.cls_emb"].shape[1]
    patches, classes = x[:, :-k] @ sd["decoder.proj_patch"], x[:, -k:] @ sd["decoder.proj_classes"]
    patches = patches / patches.norm(dim=-1, keepdim=True)
    classes = classes / classes.norm(dim=-1, keepdim=True)
    masks = _layer_norm(patches @ classes.transpose(1, 2), sd["decoder.mask_norm.weight"], sd["decoder.mask_norm.bias"],
                        eps)
    return masks.transpose(1, 2).reshape(batch, k, height, width)


def _official_to_mmseg(sd: dict) -> dict:
    """The same network under mmseg's names (the test's own inverse mapping)."""
    block_parts = {"norm1": "ln1", "norm2": "ln2", "attn.qkv.weight": "attn.attn.in_proj_weight",
                   "attn.qkv.bias": "attn.attn.in_proj_bias", "attn.proj": "attn.attn.out_proj",
                   "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1"}
    out = {}
    for key, value in sd.items():
        if key.startswith("encoder.head."):
            continue
        new = key.replace("encoder.", "backbone.").replace("decoder.", "decode_head.")
        new = new.replace("blocks.", "layers.").replace("patch_embed.proj.", "patch_embed.projection.")
        for ours, theirs in block_parts.items():
            new = new.replace(f".{ours}", f".{theirs}")
        new = new.replace("backbone.norm.", "backbone.ln1.").replace("proj_dec", "dec_proj")
        if new in ("decode_head.proj_patch", "decode_head.proj_classes"):
            new, value = new.replace("proj_patch", "patch_proj").replace("proj_classes", "classes_proj") + ".weight", \
                value.T
        out[new] = value
    k, c = sd["decoder.cls_emb"].shape[1:]
    out["decode_head.conv_seg.weight"], out["decode_head.conv_seg.bias"] = torch.zeros(k, c, 1, 1), torch.zeros(k)
    return out


def test_official_and_mmseg_numerics():
    from seglab.convert.segmenter import convert_segmenter_mmseg, convert_segmenter_official

    torch.manual_seed(0)
    official = _tensors(official_manifest("t", 6), device="cpu")
    result = convert_segmenter_official(official, "segmenter_vit_t")
    model = create_model("segmenter_vit_t", num_classes=result.num_classes, **result.overrides).eval()
    model.load_state_dict(result.state_dict, strict=True)
    assert model.backbone.norm.eps == 1e-5 and model.backbone.interpolate_mode == "bilinear"
    images = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        feature = model.backbone(images)[-1]
        ours = model(images)
        ref = _official_decoder(official, feature, heads=3)
    assert ours.shape == (1, 6, 3, 4)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    mmseg = convert_segmenter_mmseg(_official_to_mmseg(official), "segmenter_vit_t")
    assert list(mmseg.state_dict) == list(result.state_dict)
    for key, value in result.state_dict.items():
        torch.testing.assert_close(mmseg.state_dict[key], value, rtol=0, atol=0, msg=key)


def test_linear_numerics_and_img_size():
    from seglab.convert.segmenter import convert_segmenter_official

    manifest = official_manifest("s", 4, linear=True)
    manifest["encoder.pos_embed"] = (1, 1 + 24 * 24, 384)  # a 384-px grid: img_size becomes an override
    official = _tensors(manifest, device="cpu")
    result = convert_segmenter_official(official, "segmenter_vit_s_linear")
    assert result.num_classes == 4 and result.overrides["img_size"] == 384
    model = create_model("segmenter_vit_s_linear", num_classes=4, **result.overrides).eval()
    model.load_state_dict(result.state_dict, strict=True)
    images = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        tokens = model.backbone(images)[-1].flatten(2).transpose(1, 2)
        ref = (tokens @ official["decoder.head.weight"].T + official["decoder.head.bias"]).transpose(1, 2)
        torch.testing.assert_close(model(images), ref.reshape(1, 4, 2, 3), rtol=0, atol=1e-5)


def test_backbone_only_sources():
    from seglab.convert.segmenter import convert_segmenter_mmseg, convert_segmenter_official

    encoder = official_manifest("t", 150).items()
    manifest = {k.removeprefix("encoder."): v for k, v in encoder if k.startswith("encoder.")}
    manifest["pos_embed"] = (1, 1 + 24 * 24, 192)  # timm vit_tiny_patch16_384
    result = convert_segmenter_official(_tensors(manifest, device="cpu"), "segmenter_vit_t")
    assert result.backbone_only and result.num_classes is None
    assert result.state_dict["backbone.pos_embed"].shape == (1, 1 + 32 * 32, 192)  # resampled to the 512-px grid
    assert set(result.dropped) == {"head.weight", "head.bias"}
    mmseg = {k: v for k, v in mmseg_manifest("t", 150).items() if k.startswith("backbone.")}
    result = convert_segmenter_mmseg(_tensors(mmseg), "segmenter_vit_t")
    assert result.backbone_only and len(result.state_dict) == len(create_model("segmenter_vit_t").backbone.state_dict())


def test_conversion_errors():
    from seglab.convert.segmenter import convert_segmenter_mmseg, convert_segmenter_official

    official = _tensors(official_manifest("t", 150))
    with pytest.raises(ValueError, match="mask-transformer checkpoint; convert it for 'segmenter_vit_s'"):
        convert_segmenter_mmseg(_tensors(mmseg_manifest("s", 150)), "segmenter_vit_s_linear")
    with pytest.raises(ValueError, match="segmenter_vit_b_linear"):
        convert_segmenter_official(_tensors(official_manifest("s", 150, linear=True)), "segmenter_vit_b")
    with pytest.raises(ValueError, match="must be one of"):
        convert_segmenter_official(official, "segformer_b0")
    with pytest.raises(ValueError, match="distilled"):
        convert_segmenter_official({**official, "encoder.dist_token": torch.empty(1, 1, 192)}, "segmenter_vit_t")
    with pytest.raises(ValueError, match="not understood.*decoder.extra"):
        convert_segmenter_official({**official, "decoder.extra": torch.empty(1)}, "segmenter_vit_t")
    with pytest.raises(ValueError, match="shape mismatches"):
        convert_segmenter_official(official, "segmenter_vit_s")


def test_mmseg_1x_checkpoint_without_patch_bias():
    """mmseg 1.x builds its ViT with `patch_bias=False` by default: no `backbone.patch_embed.projection.bias`. The
    result then carries `patch_bias=False` and loads strictly (whole model and backbone-only)."""
    from seglab.convert.segmenter import convert_segmenter_mmseg

    manifest = {k: v for k, v in mmseg_manifest("t", 150).items() if k != "backbone.patch_embed.projection.bias"}
    result = convert_segmenter_mmseg(_tensors(manifest, device="cpu"), "segmenter_vit_t")
    assert result.overrides == {"patch_bias": False}
    model = create_model("segmenter_vit_t", num_classes=150, **result.overrides)
    assert model.backbone.patch_embed.proj.bias is None
    model.load_state_dict(result.state_dict, strict=True)
    backbone = {k: v for k, v in manifest.items() if k.startswith("backbone.")}
    assert convert_segmenter_mmseg(_tensors(backbone), "segmenter_vit_t").overrides == {"patch_bias": False}
    with_bias = convert_segmenter_mmseg(_tensors(mmseg_manifest("t", 150)), "segmenter_vit_t")
    assert "patch_bias" not in with_bias.overrides  # mmseg 0.x checkpoints (and vit2mmseg files) keep the bias
