"""SegNeXt checkpoint conversion from the official Visual-Attention-Network and mmsegmentation 1.x layouts.

Synthetic checkpoints come from key/shape manifests written here from the original module definitions (official
`mscan.py` + `ham_head.py`; mmseg 1.x `MSCAN` + `LightHamHead`), filled with random values, or from a random seglab
model written out in a source layout by an inverse mapping written here. A converted model is also compared with a
naive forward pass computed directly on the official tensors (`F.conv2d`, `F.batch_norm`, ...), so a swapped name
in the converter (e.g. `norm1`/`norm2` or `proj_1`/`proj_2`, which have equal shapes) cannot be mirrored by the test.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab import create_model
from seglab.convert import convert_checkpoint
from seglab.convert.segnext import convert_segnext_official

# official `local_configs/segnext/*` (= mmseg 1.x `segnext_mscan-*` configs): MSCAN dims/depths and head width
VARIANTS = {
    "t": {"dims": (32, 64, 160, 256), "depths": (3, 3, 5, 2), "head": 256},
    "s": {"dims": (64, 128, 320, 512), "depths": (2, 2, 4, 2), "head": 256},
    "b": {"dims": (64, 128, 320, 512), "depths": (3, 3, 12, 3), "head": 512},
    "l": {"dims": (64, 128, 320, 512), "depths": (3, 5, 27, 3), "head": 1024},
}
MLP_RATIOS = (8, 8, 4, 4)
STRIP_KERNELS = (7, 11, 21)  # `conv{i}_1` is (1, k), `conv{i}_2` is (k, 1)
OFFICIAL_RANK = {"t": 16, "s": 16, "b": 64, "l": 64}  # MD_R: set to 16 in the T/S configs, code default 64 for B/L
LAYOUTS = ("official", "mmseg")
DWCONV = {"official": "mlp.dwconv.dwconv", "mmseg": "mlp.dwconv"}  # `DWConv` wrapper vs. a direct child
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
IMAGE_SIZE = (70, 90)  # odd, non-square: stride-32 maps are 3x3, every padding path is exercised


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (() if k == "num_batches_tracked" else (channels,)) for k in BN_KEYS}


def _pair(prefix: str, weight: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": weight, f"{prefix}.bias": (weight[0],)}


def backbone_manifest(variant: str, layout: str, prefix: str = "backbone.") -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the official / mmseg `MSCAN` (StemConv, OverlapPatchEmbed, Block/MSCABlock, LayerNorms)."""
    dims, depths = VARIANTS[variant]["dims"], VARIANTS[variant]["depths"]
    shapes: dict[str, tuple[int, ...]] = {}
    stem = f"{prefix}patch_embed1.proj"
    shapes |= _pair(f"{stem}.0", (dims[0] // 2, 3, 3, 3))
    shapes |= _bn(f"{stem}.1", dims[0] // 2)
    shapes |= _pair(f"{stem}.3", (dims[0], dims[0] // 2, 3, 3))
    shapes |= _bn(f"{stem}.4", dims[0])
    for s, (dim, depth, ratio) in enumerate(zip(dims, depths, MLP_RATIOS, strict=True), start=1):
        if s > 1:
            shapes |= _pair(f"{prefix}patch_embed{s}.proj", (dim, dims[s - 2], 3, 3))
            shapes |= _bn(f"{prefix}patch_embed{s}.norm", dim)
        hidden = dim * ratio
        for j in range(depth):
            p = f"{prefix}block{s}.{j}"
            shapes |= _bn(f"{p}.norm1", dim)
            shapes |= _pair(f"{p}.attn.proj_1", (dim, dim, 1, 1))
            shapes |= _pair(f"{p}.attn.spatial_gating_unit.conv0", (dim, 1, 5, 5))
            for i, k in enumerate(STRIP_KERNELS):
                shapes |= _pair(f"{p}.attn.spatial_gating_unit.conv{i}_1", (dim, 1, 1, k))
                shapes |= _pair(f"{p}.attn.spatial_gating_unit.conv{i}_2", (dim, 1, k, 1))
            shapes |= _pair(f"{p}.attn.spatial_gating_unit.conv3", (dim, dim, 1, 1))
            shapes |= _pair(f"{p}.attn.proj_2", (dim, dim, 1, 1))
            shapes |= _bn(f"{p}.norm2", dim)
            shapes |= _pair(f"{p}.mlp.fc1", (hidden, dim, 1, 1))
            shapes |= _pair(f"{p}.{DWCONV[layout]}", (hidden, 1, 3, 3))
            shapes |= _pair(f"{p}.mlp.fc2", (dim, hidden, 1, 1))
            shapes[f"{p}.layer_scale_1"] = (dim,)
            shapes[f"{p}.layer_scale_2"] = (dim,)
        shapes |= _pair(f"{prefix}norm{s}", (dim,))
    return shapes


def segnext_manifest(variant: str, layout: str, num_classes: int, head: int | None = None) -> dict[str, tuple]:
    """Keys and shapes of a whole segmentor: MSCAN + `LightHamHead` (mmcv ConvModules, GN named `gn`)."""
    head = head or VARIANTS[variant]["head"]
    shapes = backbone_manifest(variant, layout)
    shapes["decode_head.squeeze.conv.weight"] = (head, sum(VARIANTS[variant]["dims"][1:]), 1, 1)
    shapes |= _pair("decode_head.squeeze.gn", (head,))
    shapes |= _pair("decode_head.hamburger.ham_in.conv", (head, head, 1, 1))
    shapes["decode_head.hamburger.ham_out.conv.weight"] = (head, head, 1, 1)
    shapes |= _pair("decode_head.hamburger.ham_out.gn", (head,))
    shapes["decode_head.align.conv.weight"] = (head, head, 1, 1)
    shapes |= _pair("decode_head.align.gn", (head,))
    shapes |= _pair("decode_head.conv_seg", (num_classes, head, 1, 1))
    return shapes


def random_state(manifest: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in manifest.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 1000, shape, generator=gen)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen)
    return state


def _meta_shapes(name: str, num_classes: int | None, overrides: dict) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **overrides)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _value_fingerprint(tensors) -> list[float]:
    """Sorted per-tensor sums: equal lists mean every value went through untouched (renames only)."""
    return sorted(float(t.double().sum()) for t in tensors)


# ---------------------------------------------------------------------------------------------------- inverse maps
_TO_OFFICIAL_MSCA = {"square": "conv0", "mix": "conv3"}
_TO_OFFICIAL_MSCA |= {f"horizontal.{i}": f"conv{i}_1" for i in range(3)}
_TO_OFFICIAL_MSCA |= {f"vertical.{i}": f"conv{i}_2" for i in range(3)}
_TO_OFFICIAL_STEM = {"conv1": "0", "bn1": "1", "conv2": "3", "bn2": "4"}


def to_source(state: dict[str, torch.Tensor], layout: str, prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """A seglab SegNeXt state dict (whole model, or `model.backbone`'s without a prefix) in a source layout."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("backbone.")
        if m := re.fullmatch(r"stages\.(\d)\.patch_embed\.(conv1|bn1|conv2|bn2)\.(.+)", key):
            new = f"{prefix}patch_embed1.proj.{_TO_OFFICIAL_STEM[m[2]]}.{m[3]}"
        elif m := re.fullmatch(r"stages\.(\d)\.patch_embed\.(proj|norm)\.(.+)", key):
            new = f"{prefix}patch_embed{int(m[1]) + 1}.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.attn\.msca\.(\w+(?:\.\d)?)\.(weight|bias)", key):
            new = f"{prefix}block{int(m[1]) + 1}.{m[2]}.attn.spatial_gating_unit.{_TO_OFFICIAL_MSCA[m[3]]}.{m[4]}"
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.mlp\.dwconv\.(weight|bias)", key):
            new = f"{prefix}block{int(m[1]) + 1}.{m[2]}.{DWCONV[layout]}.{m[3]}"
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(.+)", key):
            new = f"{prefix}block{int(m[1]) + 1}.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"stages\.(\d)\.norm\.(weight|bias)", key):
            new = f"{prefix}norm{int(m[1]) + 1}.{m[2]}"
        elif key == "decode_head.classifier.weight" or key == "decode_head.classifier.bias":
            new = key.replace("classifier", "conv_seg")
        elif key.startswith("decode_head."):
            new = key.replace(".norm.", ".gn.")
        else:
            raise AssertionError(f"test inverse map does not know {key}")
        out[new] = value.clone()
    return out


# ---------------------------------------------------------------------------------------------------- random models
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random affine norms, layer scales and biases, and BN statistics measured on a random image, so that every
    tensor matters in the output. (Statistics drawn at random would not match the features: MSCA multiplies its
    input by a function of itself, and the activations of a deep stage would overflow.)"""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen) * (high - low) + low

    model.eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                module.weight.copy_(uniform(module.weight, 0.5, 1.5))
                module.bias.copy_(uniform(module.bias, -0.2, 0.2))
            if isinstance(module, nn.BatchNorm2d):
                module.train()
                module.momentum = None  # cumulative average: one forward sets the statistics of that batch
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.copy_(uniform(module.bias, -0.1, 0.1))
        for name, param in model.named_parameters():
            if "layer_scale" in name:
                param.copy_(uniform(param, 0.2, 1.0))
        model.backbone(torch.randn(2, 3, 64, 64, generator=gen))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=gen)))
    return model.eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(11))


# ---------------------------------------------------------------------------------------------------- naive forward
def _conv(x, sd, p, stride=1, padding=0, groups=1):
    return F.conv2d(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"), stride=stride, padding=padding, groups=groups)


def _bn_eval(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def naive_msca(v: torch.Tensor, sd: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    """Official `AttentionModule.forward` on the official tensors under `p` (`...attn.spatial_gating_unit`)."""
    dim = v.shape[1]
    local = _conv(v, sd, f"{p}.conv0", padding=2, groups=dim)
    summed = local
    for i, k in enumerate(STRIP_KERNELS):
        branch = _conv(local, sd, f"{p}.conv{i}_1", padding=(0, k // 2), groups=dim)
        summed = summed + _conv(branch, sd, f"{p}.conv{i}_2", padding=(k // 2, 0), groups=dim)
    return _conv(summed, sd, f"{p}.conv3") * v


def naive_block(x: torch.Tensor, sd: dict[str, torch.Tensor], p: str, dwconv: str) -> torch.Tensor:
    normed = _bn_eval(x, sd, f"{p}.norm1")
    attn = naive_msca(F.gelu(_conv(normed, sd, f"{p}.attn.proj_1")), sd, f"{p}.attn.spatial_gating_unit")
    attn = _conv(attn, sd, f"{p}.attn.proj_2") + normed
    x = x + sd[f"{p}.layer_scale_1"][:, None, None] * attn
    hidden = _conv(_bn_eval(x, sd, f"{p}.norm2"), sd, f"{p}.mlp.fc1")
    hidden = F.gelu(_conv(hidden, sd, f"{p}.{dwconv}", padding=1, groups=hidden.shape[1]))
    return x + sd[f"{p}.layer_scale_2"][:, None, None] * _conv(hidden, sd, f"{p}.mlp.fc2")


def naive_backbone(sd: dict[str, torch.Tensor], x: torch.Tensor, layout: str) -> list[torch.Tensor]:
    outs = []
    for s in range(1, 5):
        if s == 1:
            x = _bn_eval(_conv(x, sd, "backbone.patch_embed1.proj.0", stride=2, padding=1), sd,
                         "backbone.patch_embed1.proj.1")
            x = _bn_eval(_conv(F.gelu(x), sd, "backbone.patch_embed1.proj.3", stride=2, padding=1), sd,
                         "backbone.patch_embed1.proj.4")
        else:
            x = _bn_eval(_conv(x, sd, f"backbone.patch_embed{s}.proj", stride=2, padding=1), sd,
                         f"backbone.patch_embed{s}.norm")
        j = 0
        while f"backbone.block{s}.{j}.layer_scale_1" in sd:
            x = naive_block(x, sd, f"backbone.block{s}.{j}", DWCONV[layout])
            j += 1
        channels = x.shape[1]
        x = F.layer_norm(x.permute(0, 2, 3, 1), (channels,), sd[f"backbone.norm{s}.weight"],
                         sd[f"backbone.norm{s}.bias"], eps=1e-5).permute(0, 3, 1, 2)  # LN over C in NHWC
        outs.append(x)
    return outs


def naive_segnext(sd: dict[str, torch.Tensor], x: torch.Tensor, layout: str, nmf: nn.Module) -> torch.Tensor:
    """Official `LightHamHead.forward` on MSCAN features; `nmf` (no tensors of its own) supplies the NMF."""
    feats = naive_backbone(sd, x, layout)[1:]
    size = feats[0].shape[-2:]
    x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats], dim=1)

    def gn(y, p):
        return F.group_norm(y, 32, sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-5)

    x = F.relu(gn(_conv(x, sd, "decode_head.squeeze.conv"), "decode_head.squeeze.gn"))
    enjoy = nmf(F.relu(_conv(x, sd, "decode_head.hamburger.ham_in.conv")))
    enjoy = gn(_conv(enjoy, sd, "decode_head.hamburger.ham_out.conv"), "decode_head.hamburger.ham_out.gn")
    x = F.relu(x + enjoy)
    x = F.relu(gn(_conv(x, sd, "decode_head.align.conv"), "decode_head.align.gn"))
    return _conv(x, sd, "decode_head.conv_seg")


# ---------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", tuple(VARIANTS))
def test_manifest_converts_to_model_layout(variant, layout):
    name = f"segnext_{variant}"
    sd = random_state(segnext_manifest(variant, layout, num_classes=19), seed=1)
    result = convert_checkpoint(sd, layout, name)
    assert result.num_classes == 19 and not result.backbone_only and result.dropped == []
    assert result.overrides == ({} if layout == "official" else {"ham_rank": 16})

    expected = _meta_shapes(name, result.num_classes, result.overrides)
    assert {k: tuple(v.shape) for k, v in result.state_dict.items()} == expected
    assert _value_fingerprint(result.state_dict.values()) == _value_fingerprint(sd.values())

    with torch.device("meta"):
        model = create_model(name, num_classes=result.num_classes, **result.overrides)
    assert model.decode_head.hamburger.ham.rank == (16 if layout == "mmseg" else OFFICIAL_RANK[variant])
    if variant in ("t", "s"):
        model = create_model(name, num_classes=result.num_classes, **result.overrides)
        model.load_state_dict(result.state_dict, strict=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", ("t", "s"))
def test_round_trip_gives_identical_outputs(variant, layout, image):
    name = f"segnext_{variant}"
    source = randomize(create_model(name, num_classes=7), seed=2)
    result = convert_checkpoint(to_source(source.state_dict(), layout), layout, name)
    assert result.num_classes == 7
    model = create_model(name, num_classes=result.num_classes, **result.overrides).eval()
    model.load_state_dict(result.state_dict, strict=True)
    with torch.no_grad():
        expected, got = source(image), model(image)
    assert got.shape == (1, 7, 9, 12)  # stride 8 of 70x90, rounded up by the padded stride-2 convs
    assert expected.std() > 0.1
    assert (got - expected).abs().max().item() <= 1e-6


@pytest.mark.parametrize("layout", LAYOUTS)
def test_converted_model_matches_naive_official_forward(layout, image):
    """The converted segnext_t against the official forward written on the source tensors by their names."""
    sd = to_source(randomize(create_model("segnext_t", num_classes=5), seed=3).state_dict(), layout)
    result = convert_checkpoint(sd, layout, "segnext_t")
    model = create_model("segnext_t", num_classes=result.num_classes, **result.overrides).eval()
    model.load_state_dict(result.state_dict, strict=True)
    with torch.no_grad():
        feats, naive_feats = model.backbone(image), naive_backbone(sd, image, layout)
        for ours, theirs in zip(feats, naive_feats, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        naive = naive_segnext(sd, image, layout, model.decode_head.hamburger.ham)
        torch.testing.assert_close(model(image), naive, rtol=1e-4, atol=1e-4)


def test_msca_matches_official_attention_module():
    """One MSCA (`spatial_gating_unit`) computed with F.conv2d on the official tensors vs. the converted module."""
    sd = random_state(segnext_manifest("t", "official", num_classes=3), seed=4)
    result = convert_checkpoint(sd, "official", "segnext_t")
    model = create_model("segnext_t", num_classes=3).eval()
    model.load_state_dict(result.state_dict, strict=True)
    v = torch.randn(2, 32, 11, 13, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model.backbone.stages[0].blocks[0].attn.msca(v)
        theirs = naive_msca(v, sd, "backbone.block1.0.attn.spatial_gating_unit")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert theirs.abs().mean() > 1.0  # the check is not vacuous


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_classifier", (False, True))
def test_imagenet_encoder_converts_backbone_only(layout, with_classifier, image):
    source = randomize(create_model("segnext_t"), seed=6)
    sd = to_source(source.backbone.state_dict(), layout, prefix="")  # `mscan_t.pth`: no `backbone.` prefix
    if with_classifier:
        sd |= {"head.weight": torch.randn(1000, 256), "head.bias": torch.randn(1000)}
    result = convert_checkpoint(sd, layout, "segnext_t")
    assert result.backbone_only and result.num_classes is None and result.overrides == {}
    assert result.dropped == (["head.weight", "head.bias"] if with_classifier else [])
    assert all(k.startswith("backbone.") for k in result.state_dict)

    model = create_model("segnext_t", num_classes=4).eval()
    model.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in result.state_dict.items()}, strict=True)
    with torch.no_grad():
        for ours, theirs in zip(model.backbone(image), source.backbone(image), strict=True):
            assert (ours - theirs).abs().max().item() <= 1e-6


def test_mmseg_accepts_wrapped_dwconv_and_official_refuses_mmseg_layout():
    wrapped = random_state(segnext_manifest("t", "official", num_classes=3), seed=7)
    from_mmseg = convert_checkpoint(wrapped, "mmseg", "segnext_t")
    from_official = convert_checkpoint(wrapped, "official", "segnext_t")
    assert from_mmseg.state_dict.keys() == from_official.state_dict.keys()
    assert all(torch.equal(from_mmseg.state_dict[k], v) for k, v in from_official.state_dict.items())

    mmseg = random_state(segnext_manifest("t", "mmseg", num_classes=3), seed=7)
    with pytest.raises(ValueError, match=r"official layout.*backbone\.block1\.0\.mlp\.dwconv\.weight"):
        convert_checkpoint(mmseg, "official", "segnext_t")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_custom_head_width_becomes_override(layout):
    sd = random_state(segnext_manifest("t", layout, num_classes=6, head=128), seed=8)
    result = convert_checkpoint(sd, layout, "segnext_t")
    assert result.overrides["head_channels"] == 128 and result.num_classes == 6
    model = create_model("segnext_t", num_classes=result.num_classes, **result.overrides)
    model.load_state_dict(result.state_dict, strict=True)


def test_missing_batch_counters_are_filled():
    sd = random_state(segnext_manifest("t", "official", num_classes=3), seed=9)
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    result = convert_checkpoint(sd, "official", "segnext_t")
    assert int(result.state_dict["backbone.stages.0.patch_embed.bn1.num_batches_tracked"]) == 0
    create_model("segnext_t", num_classes=3).load_state_dict(result.state_dict, strict=True)


def test_unknown_key_is_named():
    sd = random_state(segnext_manifest("t", "official", num_classes=3))
    sd["backbone.block1.0.foo.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"not understood.*backbone\.block1\.0\.foo\.weight"):
        convert_checkpoint(sd, "official", "segnext_t")


def test_missing_key_and_classifier_are_named():
    sd = random_state(segnext_manifest("t", "mmseg", num_classes=3))
    del sd["backbone.block3.1.norm2.bias"]
    with pytest.raises(ValueError, match=r"missing.*backbone\.stages\.2\.blocks\.1\.norm2\.bias"):
        convert_checkpoint(sd, "mmseg", "segnext_t")
    sd = random_state(segnext_manifest("t", "mmseg", num_classes=3))
    del sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"]
    with pytest.raises(ValueError, match=r"no classifier `decode_head\.conv_seg\.weight`"):
        convert_checkpoint(sd, "mmseg", "segnext_t")


def test_wrong_variant_names_keys_and_shapes():
    sd = random_state(segnext_manifest("t", "official", num_classes=3))
    with pytest.raises(ValueError) as info:
        convert_checkpoint(sd, "official", "segnext_s")
    message = str(info.value)
    assert "segnext_s" in message and "shape mismatches" in message
    assert "backbone.stages.0.patch_embed.conv1.weight" in message and "backbone.patch_embed1.proj.0.weight" in message
    assert "(16, 3, 3, 3)" in message and "(32, 3, 3, 3)" in message


def test_other_model_names_are_refused():
    sd = random_state(segnext_manifest("t", "official", num_classes=3))
    supported = "segnext_t, segnext_s, segnext_b, segnext_l"
    with pytest.raises(ValueError, match=f"must be one of {supported}, got 'segformer_b0'"):
        convert_segnext_official(sd, "segformer_b0")
    with pytest.raises(ValueError, match=f"must be one of {supported}, got 'segnext_xl'"):
        convert_checkpoint(sd, "mmseg", "segnext_xl")
    with pytest.raises(ValueError, match="no 'hf' converter for model 'segnext_t'"):
        convert_checkpoint(sd, "hf", "segnext_t")


def test_cli_convert_writes_a_loadable_checkpoint(tmp_path, capsys, image):
    from seglab.checkpoint import read_checkpoint_meta
    from seglab.cli.main import main

    source = create_model("segnext_b", num_classes=3)
    src, dst = tmp_path / "segnext_b_mmseg.pth", tmp_path / "segnext_b.safetensors"
    torch.save({"meta": {"iter": 160000}, "state_dict": to_source(source.state_dict(), "mmseg")}, src)
    assert main(["convert", "--source", "mmseg", "--model", "segnext_b", str(src), str(dst)]) == 0
    assert "num_classes 3" in capsys.readouterr().out
    meta = read_checkpoint_meta(dst)
    assert meta.num_classes == 3 and meta.overrides == {"ham_rank": 16}
    model = create_model("segnext_b", checkpoint=dst)
    assert model.decode_head.hamburger.ham.rank == 16
    expected = source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
