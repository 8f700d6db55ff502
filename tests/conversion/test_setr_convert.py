"""SETR converters: mmseg and original (fudan-zvg/SETR) layouts built here from their module structures (key names and
shapes), converted, loaded strictly, and checked against the source heads' forward written in plain F ops; full-model
round trips on a reduced ViT (ViT-T, four layers) at small inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seglab.models.setr  # noqa: F401  (registers the SETR models)
from seglab.convert.setr import convert_setr_mmseg, convert_setr_official
from seglab.registry import create_model

C, DEPTH, GRID, NCLS = 192, 12, 4, 5  # ViT-T, position embedding for 64x64 (4x4 patches)
LAYERS = (1, 3, 5, 7)
TINY = {"layers": LAYERS}
MLA_SMALL = {"layers": LAYERS, "neck_channels": 16, "head_channels": 8}


def _bn(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (n,), f"{prefix}.bias": (n,), f"{prefix}.running_mean": (n,),
            f"{prefix}.running_var": (n,), f"{prefix}.num_batches_tracked": ()}


def _random(manifest: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    out = {}
    for key, shape in manifest.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape) + 0.5
        else:
            out[key] = torch.randn(shape) * 0.2
    return out


# ----------------------------------------------------------------------------------------- source manifests


def mmseg_vit() -> dict[str, tuple[int, ...]]:
    """mmseg `VisionTransformer` (patch_norm False, final_norm False) under `backbone.`."""
    m = {"backbone.patch_embed.projection.weight": (C, 3, 16, 16), "backbone.patch_embed.projection.bias": (C,),
         "backbone.cls_token": (1, 1, C), "backbone.pos_embed": (1, 1 + GRID * GRID, C)}
    for i in range(DEPTH):
        p = f"backbone.layers.{i}."
        m |= {p + "ln1.weight": (C,), p + "ln1.bias": (C,), p + "ln2.weight": (C,), p + "ln2.bias": (C,),
              p + "attn.attn.in_proj_weight": (3 * C, C), p + "attn.attn.in_proj_bias": (3 * C,),
              p + "attn.attn.out_proj.weight": (C, C), p + "attn.attn.out_proj.bias": (C,),
              p + "ffn.layers.0.0.weight": (4 * C, C), p + "ffn.layers.0.0.bias": (4 * C,),
              p + "ffn.layers.1.weight": (C, 4 * C), p + "ffn.layers.1.bias": (C,)}
    return m


def official_vit() -> dict[str, tuple[int, ...]]:
    """The original `VisionTransformer` / `VIT_MLA` encoder (timm names, no final norm) under `backbone.`."""
    m = {"backbone.patch_embed.proj.weight": (C, 3, 16, 16), "backbone.patch_embed.proj.bias": (C,),
         "backbone.cls_token": (1, 1, C), "backbone.pos_embed": (1, 1 + GRID * GRID, C)}
    for i in range(DEPTH):
        p = f"backbone.blocks.{i}."
        m |= {p + "norm1.weight": (C,), p + "norm1.bias": (C,), p + "norm2.weight": (C,), p + "norm2.bias": (C,),
              p + "attn.qkv.weight": (3 * C, C), p + "attn.qkv.bias": (3 * C,), p + "attn.proj.weight": (C, C),
              p + "attn.proj.bias": (C,), p + "mlp.fc1.weight": (4 * C, C), p + "mlp.fc1.bias": (4 * C,),
              p + "mlp.fc2.weight": (C, 4 * C), p + "mlp.fc2.bias": (C,)}
    return m


def mmseg_up_head(prefix: str, channels: int, num_convs: int, kernel: int) -> dict[str, tuple[int, ...]]:
    """`SETRUPHead`: norm, up_convs.{i} = Sequential(ConvModule(conv, bn), Upsample), conv_seg."""
    m = {f"{prefix}.norm.weight": (C,), f"{prefix}.norm.bias": (C,)}
    for i in range(num_convs):
        m[f"{prefix}.up_convs.{i}.0.conv.weight"] = (channels, C if i == 0 else channels, kernel, kernel)
        m |= _bn(f"{prefix}.up_convs.{i}.0.bn", channels)
    return m | {f"{prefix}.conv_seg.weight": (NCLS, channels, 1, 1), f"{prefix}.conv_seg.bias": (NCLS,)}


def mmseg_mla(neck: int = 16, head: int = 8) -> dict[str, tuple[int, ...]]:
    """`MLANeck` (norm, mla.channel_proj, mla.feat_extract), `SETRMLAHead` (up_convs.{i}.{0,1}, conv_seg), FCN aux."""
    m = {}
    for i in range(4):
        m |= {f"neck.norm.{i}.weight": (C,), f"neck.norm.{i}.bias": (C,),
              f"neck.mla.channel_proj.{i}.conv.weight": (neck, C, 1, 1),
              f"neck.mla.feat_extract.{i}.conv.weight": (neck, neck, 3, 3)}
        m |= _bn(f"neck.mla.channel_proj.{i}.bn", neck) | _bn(f"neck.mla.feat_extract.{i}.bn", neck)
        for j in range(2):
            m[f"decode_head.up_convs.{i}.{j}.conv.weight"] = (head, neck if j == 0 else head, 3, 3)
            m |= _bn(f"decode_head.up_convs.{i}.{j}.bn", head)
        m |= {f"auxiliary_head.{i}.conv_seg.weight": (NCLS, neck, 1, 1), f"auxiliary_head.{i}.conv_seg.bias": (NCLS,)}
    return m | {"decode_head.conv_seg.weight": (NCLS, 4 * head, 1, 1), "decode_head.conv_seg.bias": (NCLS,)}


def official_up_head(prefix: str, num_conv: int, kernel: int) -> dict[str, tuple[int, ...]]:
    """`VisionTransformerUpHead` (256 wide): norm, conv_k (bias) + syncbn_fc_k, classifier conv, unused conv_seg."""
    m = {f"{prefix}.norm.weight": (C,), f"{prefix}.norm.bias": (C,)}
    convs = num_conv - 1  # num_conv counts the classifier
    for k in range(convs):
        m |= {f"{prefix}.conv_{k}.weight": (256, C if k == 0 else 256, kernel, kernel),
              f"{prefix}.conv_{k}.bias": (256,)}
        m |= _bn(f"{prefix}.syncbn_fc_{k}", 256)
    m |= {f"{prefix}.conv_{convs}.weight": (NCLS, 256, 1, 1), f"{prefix}.conv_{convs}.bias": (NCLS,)}
    return m | {f"{prefix}.conv_seg.weight": (NCLS, 512, 1, 1), f"{prefix}.conv_seg.bias": (NCLS,)}


def official_mla() -> dict[str, tuple[int, ...]]:
    """`VIT_MLA`'s neck (norm_{0..3}, mla.mla_p{K}_1x1 / mla_p{K}), `VIT_MLAHead`, `VIT_MLA_AUXIHead` x4."""
    m = {}
    for k in range(4):
        level = k + 2
        m |= {f"backbone.norm_{k}.weight": (C,), f"backbone.norm_{k}.bias": (C,),
              f"backbone.mla.mla_p{level}_1x1.0.weight": (256, C, 1, 1),
              f"backbone.mla.mla_p{level}.0.weight": (256, 256, 3, 3),
              f"decode_head.mlahead.head{level}.0.weight": (128, 256, 3, 3),
              f"decode_head.mlahead.head{level}.3.weight": (128, 128, 3, 3),
              f"auxiliary_head.{k}.aux.weight": (NCLS, 256, 1, 1),
              f"auxiliary_head.{k}.conv_seg.weight": (NCLS, 512, 1, 1), f"auxiliary_head.{k}.conv_seg.bias": (NCLS,)}
        m |= _bn(f"backbone.mla.mla_p{level}_1x1.1", 256) | _bn(f"backbone.mla.mla_p{level}.1", 256)
        m |= _bn(f"decode_head.mlahead.head{level}.1", 128) | _bn(f"decode_head.mlahead.head{level}.4", 128)
    return m | {"decode_head.cls.weight": (NCLS, 512, 3, 3), "decode_head.cls.bias": (NCLS,),
                "decode_head.conv_seg.weight": (NCLS, 512, 1, 1), "decode_head.conv_seg.bias": (NCLS,)}


# ------------------------------------------------------------------------------- source forwards, plain F ops


def _ln(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    t = F.layer_norm(x.reshape(n, c, h * w).transpose(1, 2), (c,), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], 1e-6)
    return t.transpose(1, 2).reshape(n, c, h, w)


def _conv(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    w = sd[f"{prefix}.weight"]
    return F.conv2d(x, w, sd.get(f"{prefix}.bias"), padding=w.shape[-1] // 2)


def _bn_relu(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    x = F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                     sd[f"{prefix}.bias"], False, 0.0, 1e-5)
    return F.relu(x)


def _up(x: torch.Tensor, scale: int, align: bool = False) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=align)


def mmseg_up_forward(sd: dict, prefix: str, x: torch.Tensor, num_convs: int, up: int) -> torch.Tensor:
    x = _ln(sd, f"{prefix}.norm", x)
    for i in range(num_convs):
        x = _up(_bn_relu(sd, f"{prefix}.up_convs.{i}.0.bn", _conv(sd, f"{prefix}.up_convs.{i}.0.conv", x)), up)
    return _conv(sd, f"{prefix}.conv_seg", x)


def mmseg_mla_forward(sd: dict, feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    normed = [_ln(sd, f"neck.norm.{i}", x) for i, x in enumerate(feats)]
    p = [_bn_relu(sd, f"neck.mla.channel_proj.{i}.bn", _conv(sd, f"neck.mla.channel_proj.{i}.conv", x))
         for i, x in enumerate(normed)]
    mids = [p[3], p[3] + p[2], p[3] + p[2] + p[1], p[3] + p[2] + p[1] + p[0]]  # m5, m4, m3, m2
    outs = [_bn_relu(sd, f"neck.mla.feat_extract.{i}.bn", _conv(sd, f"neck.mla.feat_extract.{i}.conv", m))
            for i, m in enumerate(mids)]
    ups = []
    for i, x in enumerate(outs):
        for j in range(2):
            x = _bn_relu(sd, f"decode_head.up_convs.{i}.{j}.bn", _conv(sd, f"decode_head.up_convs.{i}.{j}.conv", x))
        ups.append(_up(x, 4))
    aux = [_conv(sd, f"auxiliary_head.{i}.conv_seg", x) for i, x in enumerate(outs)]
    return _conv(sd, "decode_head.conv_seg", torch.cat(ups, 1)), aux


def official_up_forward(sd: dict, prefix: str, x: torch.Tensor, num_conv: int, ups: int, img: int) -> torch.Tensor:
    """`VisionTransformerUpHead.forward` (num_conv 2 with 1 or 2 upsampling layers, or num_conv 4 with 4)."""
    x = _ln(sd, f"{prefix}.norm", x)
    if num_conv == 2:
        x = _bn_relu(sd, f"{prefix}.syncbn_fc_0", _conv(sd, f"{prefix}.conv_0", x))
        if ups == 2:
            x = F.interpolate(x, size=x.shape[-1] * 4, mode="bilinear", align_corners=False)
        x = _conv(sd, f"{prefix}.conv_1", x)
    else:
        for k in range(4):
            x = _bn_relu(sd, f"{prefix}.syncbn_fc_{k}", _conv(sd, f"{prefix}.conv_{k}", x))
            if k < 3:
                x = F.interpolate(x, size=x.shape[-1] * 2, mode="bilinear", align_corners=False)
        x = F.interpolate(_conv(sd, f"{prefix}.conv_4", x), size=x.shape[-1] * 2, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=img, mode="bilinear", align_corners=False)


def official_mla_forward(sd: dict, feats: list[torch.Tensor], img: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    p = [_bn_relu(sd, f"backbone.mla.mla_p{k + 2}_1x1.1",
                  _conv(sd, f"backbone.mla.mla_p{k + 2}_1x1.0", _ln(sd, f"backbone.norm_{k}", x)))
         for k, x in enumerate(feats)]
    plus = [p[0] + p[1] + p[2] + p[3], p[1] + p[2] + p[3], p[2] + p[3], p[3]]  # p2_plus, p3_plus, p4_plus, p5
    outs = [_bn_relu(sd, f"backbone.mla.mla_p{k + 2}.1", _conv(sd, f"backbone.mla.mla_p{k + 2}.0", m))
            for k, m in enumerate(plus)]
    heads = []
    for k, x in enumerate(outs):
        h = f"decode_head.mlahead.head{k + 2}"
        x = _bn_relu(sd, f"{h}.4", _conv(sd, f"{h}.3", _bn_relu(sd, f"{h}.1", _conv(sd, f"{h}.0", x))))
        heads.append(F.interpolate(x, 4 * x.shape[-1], mode="bilinear", align_corners=True))
    logits = F.interpolate(_conv(sd, "decode_head.cls", torch.cat(heads, 1)), size=img, mode="bilinear",
                           align_corners=False)
    aux = [F.interpolate(F.conv2d(x, sd[f"auxiliary_head.{k}.aux.weight"]), size=img, mode="bilinear",
                         align_corners=False) for k, x in enumerate(outs)]
    return logits, aux


def _feats(n: int = 4) -> list[torch.Tensor]:
    torch.manual_seed(3)
    return [torch.randn(2, C, GRID, GRID) for _ in range(n)]


def _load(result, name: str) -> torch.nn.Module:
    model = create_model(name, num_classes=result.num_classes, **result.overrides).eval()
    model.load_state_dict(result.state_dict, strict=True)
    return model


def _to_image(logits: torch.Tensor, model: torch.nn.Module, img: int) -> torch.Tensor:
    """What inference does to the logits: a bilinear resize to the image (here the crop) size."""
    return F.interpolate(logits, size=(img, img), mode="bilinear", align_corners=model.decode_head.align_corners)


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize(("name", "main", "aux"), [("setr_naive_vit_l", (1, 1, 4), (2, 1, 4)),
                                                    ("setr_pup_vit_l", (4, 3, 2), (2, 3, 4))])
def test_mmseg_up_heads(name: str, main: tuple[int, int, int], aux: tuple[int, int, int]) -> None:
    manifest = mmseg_vit() | mmseg_up_head("decode_head", 256, main[0], main[1])
    for j in range(3):
        manifest |= mmseg_up_head(f"auxiliary_head.{j}", 256, aux[0], aux[1])
    sd = _random(manifest)
    result = convert_setr_mmseg(sd, name, overrides=TINY)
    assert result.num_classes == NCLS and result.overrides == {"img_size": 64, "vit": "t", "layers": LAYERS}
    assert not result.dropped
    model = _load(result, name)
    qkv = sd["backbone.layers.3.attn.attn.in_proj_weight"]
    torch.testing.assert_close(model.backbone.blocks[3].attn.qkv.weight, qkv)
    torch.testing.assert_close(model.backbone.blocks[3].mlp.fc1.bias, sd["backbone.layers.3.ffn.layers.0.0.bias"])
    feats = _feats()
    with torch.no_grad():
        torch.testing.assert_close(model.decode_head(feats), mmseg_up_forward(sd, "decode_head", feats[3], *main[::2]),
                                   atol=1e-5, rtol=1e-5)
        for j, head in enumerate(model.aux_heads):
            want = mmseg_up_forward(sd, f"auxiliary_head.{j}", feats[j], aux[0], aux[2])
            torch.testing.assert_close(head(feats), want, atol=1e-5, rtol=1e-5)


def test_mmseg_mla() -> None:
    sd = _random(mmseg_vit() | mmseg_mla())
    result = convert_setr_mmseg(sd, "setr_mla_vit_l", overrides=MLA_SMALL)
    model = _load(result, "setr_mla_vit_l")
    feats = _feats()
    logits, aux = mmseg_mla_forward(sd, feats)
    with torch.no_grad():
        neck = model.neck(feats)
        torch.testing.assert_close(model.decode_head(neck), logits, atol=1e-5, rtol=1e-5)
        # mmseg's auxiliary head i reads its neck output i, the sum from level 3 - i down: seglab's output 3 - i
        for i in range(4):
            torch.testing.assert_close(model.aux_heads[3 - i](neck), aux[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["naive", "pup"])
def test_official_up_heads(variant: str) -> None:
    num_conv, kernel, ups = (2, 1, 1) if variant == "naive" else (5, 3, 4)
    aux_conv, aux_kernel, aux_ups = (2, 1, 1) if variant == "naive" else (2, 3, 2)
    n_aux = 3 if variant == "naive" else 4
    manifest = official_vit() | official_up_head("decode_head", num_conv, kernel)
    for j in range(n_aux):
        manifest |= official_up_head(f"auxiliary_head.{j}", aux_conv, aux_kernel)
    sd = _random(manifest)
    name = f"setr_{variant}_vit_l"
    result = convert_setr_official(sd, name, overrides=TINY)
    assert sorted(result.dropped) == sorted(k for k in sd if ".conv_seg." in k)
    model = _load(result, name)
    feats = _feats()
    img = GRID * 16
    with torch.no_grad():
        want = official_up_forward(sd, "decode_head", feats[3], 4 if variant == "pup" else 2, ups, img)
        torch.testing.assert_close(_to_image(model.decode_head(feats), model, img), want, atol=1e-5, rtol=1e-5)
        assert len(model.aux_heads) == n_aux
        for j, head in enumerate(model.aux_heads):
            want = official_up_forward(sd, f"auxiliary_head.{j}", feats[j], 2, aux_ups, img)
            torch.testing.assert_close(_to_image(head(feats), model, img), want, atol=1e-5, rtol=1e-5)
    if variant == "naive":
        assert model.output_stride == 16


def test_official_mla() -> None:
    sd = _random(official_vit() | official_mla())
    result = convert_setr_official(sd, "setr_mla_vit_l", overrides=TINY)
    assert result.overrides["classifier_kernel"] == 3 and result.overrides["up_align_corners"] is True
    model = _load(result, "setr_mla_vit_l")
    feats = _feats()
    img = GRID * 16
    logits, aux = official_mla_forward(sd, feats, img)
    with torch.no_grad():
        neck = model.neck(feats)
        torch.testing.assert_close(_to_image(model.decode_head(neck), model, img), logits, atol=1e-5, rtol=1e-5)
        for k, head in enumerate(model.aux_heads):
            torch.testing.assert_close(_to_image(head(neck), model, img), aux[k], atol=1e-5, rtol=1e-5)


def _mmseg_from_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """seglab SETR-MLA -> mmseg names (the inverse of the converter, written from mmseg's module structure)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("backbone.blocks."):
            i, rest = parts[2], ".".join(parts[3:])
            rest = {"norm1.weight": "ln1.weight", "norm1.bias": "ln1.bias", "norm2.weight": "ln2.weight",
                    "norm2.bias": "ln2.bias", "attn.qkv.weight": "attn.attn.in_proj_weight",
                    "attn.qkv.bias": "attn.attn.in_proj_bias", "attn.proj.weight": "attn.attn.out_proj.weight",
                    "attn.proj.bias": "attn.attn.out_proj.bias", "mlp.fc1.weight": "ffn.layers.0.0.weight",
                    "mlp.fc1.bias": "ffn.layers.0.0.bias", "mlp.fc2.weight": "ffn.layers.1.weight",
                    "mlp.fc2.bias": "ffn.layers.1.bias"}[rest]
            out[f"backbone.layers.{i}.{rest}"] = value
        elif key.startswith("backbone.patch_embed.proj."):
            out[key.replace(".proj.", ".projection.")] = value
        elif key.startswith("backbone."):
            out[key] = value
        elif key.startswith("neck.norms."):
            out[f"neck.norm.{parts[2]}.{parts[3]}"] = value
        elif key.startswith(("neck.lateral_convs.", "neck.out_convs.")):
            module, index = ("channel_proj", parts[2]) if parts[1] == "lateral_convs" else ("feat_extract",
                                                                                           str(3 - int(parts[2])))
            out[f"neck.mla.{module}.{index}.{parts[3].replace('norm', 'bn')}.{parts[4]}"] = value
        elif key.startswith("decode_head.convs."):
            leaf = f"{parts[4].replace('norm', 'bn')}.{parts[5]}"
            out[f"decode_head.up_convs.{3 - int(parts[2])}.{parts[3]}.{leaf}"] = value
        elif key == "decode_head.classifier.weight":
            out["decode_head.conv_seg.weight"] = torch.cat(value.chunk(4, dim=1)[::-1], dim=1)
        elif key == "decode_head.classifier.bias":
            out["decode_head.conv_seg.bias"] = value
        elif key.startswith("aux_heads."):
            out[f"auxiliary_head.{3 - int(parts[1])}.conv_seg.{parts[3]}"] = value
        else:
            raise AssertionError(f"unexpected seglab key {key}")
    return out


def test_mmseg_mla_round_trip_full_model() -> None:
    torch.manual_seed(0)
    model = create_model("setr_mla_vit_l", num_classes=NCLS, vit="t", img_size=64, **MLA_SMALL).eval()
    for name, tensor in model.state_dict().items():
        if name.endswith("running_var"):
            tensor.copy_(torch.rand_like(tensor) + 0.5)
        elif name.endswith("running_mean"):
            tensor.copy_(torch.randn_like(tensor) * 0.1)
    result = convert_setr_mmseg(_mmseg_from_ours(model.state_dict()), "setr_mla_vit_l", overrides=MLA_SMALL)
    loaded = _load(result, "setr_mla_vit_l")
    images = torch.randn(1, 3, 77, 50)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
        for a, b in zip(loaded.forward_train(images)[1], model.forward_train(images)[1], strict=True):
            torch.testing.assert_close(a, b)


def test_official_pup_round_trip_full_model() -> None:
    overrides = {"aux_num_convs": 1, "aux_up_scale": 4, "aux_in_index": (0, 1, 2, 3), **TINY}
    torch.manual_seed(0)
    model = create_model("setr_pup_vit_l", num_classes=NCLS, vit="t", img_size=64, **overrides).eval()
    state = model.state_dict()
    source = {}
    for key, value in state.items():
        parts = key.split(".")
        head = {"decode_head": "decode_head"}.get(parts[0], f"auxiliary_head.{parts[1]}")
        rest = parts[1:] if parts[0] == "decode_head" else parts[2:]
        if parts[0] == "backbone":
            source[key] = value
        elif rest[0] == "norm":
            source[f"{head}.norm.{rest[1]}"] = value
        elif rest[0] == "convs" and rest[2] == "conv":
            bias = torch.randn(value.shape[0]) * 0.1  # the original convs before a BN have a bias
            source[f"{head}.conv_{rest[1]}.weight"] = value
            source[f"{head}.conv_{rest[1]}.bias"] = bias
            mean = state[key.replace("conv.weight", "norm.running_mean")]
            source[f"{head}.syncbn_fc_{rest[1]}.running_mean"] = mean + bias  # BN(Wx + b) with mean + b == BN(Wx)
        elif rest[0] == "convs" and rest[3] != "running_mean":
            source[f"{head}.syncbn_fc_{rest[1]}.{rest[3]}"] = value
        elif rest[0] == "classifier":
            last = 4 if parts[0] == "decode_head" else 1
            source[f"{head}.conv_{last}.{rest[1]}"] = value
    result = convert_setr_official(source, "setr_pup_vit_l", overrides=TINY)
    # the original numerics that differ from mmseg's defaults (its aux heads upsample x4 like mmseg's)
    assert result.overrides == {"aux_num_convs": 1, "aux_in_index": (0, 1, 2, 3), "img_size": 64, "vit": "t",
                                "layers": LAYERS}
    loaded = _load(result, "setr_pup_vit_l")
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images), atol=1e-5, rtol=1e-5)


def test_backbone_only_sources_resample_the_position_embedding() -> None:
    manifest = {k.removeprefix("backbone."): v for k, v in official_vit().items()}
    manifest |= {"norm.weight": (C,), "norm.bias": (C,), "head.weight": (10, C), "head.bias": (10,)}
    sd = _random(manifest)
    result = convert_setr_official(sd, "setr_naive_vit_l", overrides={"vit": "t", "img_size": 96, **TINY})
    assert result.backbone_only and result.num_classes is None
    assert sorted(result.dropped) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    pos = result.state_dict["backbone.pos_embed"]
    assert pos.shape == (1, 1 + 6 * 6, C)
    torch.testing.assert_close(pos[:, 0], sd["pos_embed"][:, 0])


def test_wrong_head_type_is_refused() -> None:
    sd = _random(mmseg_vit() | mmseg_up_head("decode_head", 256, 4, 3))
    with pytest.raises(ValueError, match="does not fit setr_naive_vit_l"):
        convert_setr_mmseg(sd, "setr_naive_vit_l", overrides=TINY)
    with pytest.raises(ValueError, match="model must be one of"):
        convert_setr_mmseg(sd, "segformer_b0")
