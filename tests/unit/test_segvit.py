"""SegViT: ATM decoders (shapes at odd sizes, the similarity masks, stage order, cumulative masks), the Shrunk head's
query upsampling, semantic inference, ATMLoss on hand-computed cases, a tiny overfit, the registered models'
parameter counts and GFLOPs, and the official checkpoint layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import seglab.models.segvit  # noqa: F401  (registers segvit_*)
from seglab.backbones.vit import VisionTransformer, ViTConfig
from seglab.convert.segvit import convert_segvit_official
from seglab.heads.atm import (
    ATMDecoderLayer,
    ATMHead,
    ATMSingleHead,
    SimilarityAttention,
    TPNATMHead,
    semantic_scores,
    upsample_masks,
)
from seglab.losses.atm import ATMLoss, dice_loss, fixed_assignment, sigmoid_focal_loss
from seglab.models.segvit import SEGVIT_VARIANTS, SegViT
from seglab.registry import create_model

TINY = ViTConfig(64, 4, 2)


def _tiny_segvit(num_classes: int = 5, shrunk: bool = False, query_mode: str = "resample") -> SegViT:
    if shrunk:
        backbone = VisionTransformer(TINY, img_size=64, out_indices=(1, 3), with_cls_token=False, shrink_index=2)
        head = TPNATMHead([64, 64], num_classes, 32, 2, query_grid=(4, 4), num_layers=2, query_mode=query_mode)
    else:
        backbone = VisionTransformer(TINY, img_size=64, out_indices=(1, 2, 3), with_cls_token=False)
        head = ATMHead([64, 64, 64], num_classes, 32, 2, num_layers=2)
    return SegViT(backbone, head, num_classes, ATMLoss(num_classes), patch_size=16)


# --- shapes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 50, 83), (1, 3, 64, 64), (1, 3, 33, 17)])
@pytest.mark.parametrize("shrunk", [False, True])
def test_shapes_at_odd_and_non_square_sizes(shape, shrunk):
    model = _tiny_segvit(shrunk=shrunk)
    batch, _, height, width = shape
    images = torch.randn(*shape)
    grid = (math.ceil(height / 16), math.ceil(width / 16))
    model.eval()
    with torch.no_grad():
        scores = model(images)
    assert scores.shape == (batch, 5, height, width)
    assert torch.isfinite(scores).all() and (scores >= 0).all() and (scores <= 5).all()
    model.train()
    class_logits, masks = model.forward_train(images)
    layers = 2 if shrunk else 3  # Shrunk: one output per ATMSingleHead layer; ATMHead: one per stage
    assert class_logits.shape == (layers, batch, 5, 6)
    assert masks.shape == (layers, batch, 5, *grid)
    labels = torch.randint(0, 5, (batch, height, width))
    loss, _ = model.training_loss((class_logits, masks), labels, 255)
    loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == [] if not shrunk else all(n.startswith("backbone.") for n in unused)


def test_shrunk_query_modes_at_another_grid():
    trained = _tiny_segvit(shrunk=True).eval()
    fixed = _tiny_segvit(shrunk=True, query_mode="fixed").eval()
    fixed.load_state_dict(trained.state_dict())
    images = torch.randn(1, 3, 48, 96)  # grid (3, 6) instead of the trained (4, 4)
    with torch.no_grad():
        resampled_masks = trained.decode_head(trained.backbone(images))[1]
        fixed_masks = fixed.decode_head(fixed.backbone(images))[1]
        assert fixed(images).shape == trained(images).shape == (1, 5, 48, 96)
    assert resampled_masks.shape[-2:] == (3, 6)
    assert fixed_masks.shape[-2:] == (4, 4)
    head = trained.decode_head
    assert head.upsampling_queries((4, 4)) is head.q.weight  # the trained grid: the embedding itself
    expected = F.interpolate(head.q.weight.T.reshape(1, 32, 4, 4), size=(3, 6), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head.upsampling_queries((3, 6)), expected.flatten(2)[0].T)
    with pytest.raises(ValueError, match="query_mode"):
        TPNATMHead([64], 5, 32, 2, (4, 4), query_mode="nearest")


# --- decoder internals --------------------------------------------------------------------------------------------


def test_similarity_equals_direct_formula():
    attn = SimilarityAttention(32, 4, attn_drop=0.0).eval()
    query, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    out, similarity = attn(query, memory)
    q, k, v = attn.q(query), attn.k(memory), attn.v(memory)
    # the head average of per-head q_h . k_h / sqrt(d) is the full dot product / (heads * sqrt(d))
    torch.testing.assert_close(similarity, q @ k.transpose(1, 2) / (4 * math.sqrt(8)))
    split = [t.reshape(2, -1, 4, 8).transpose(1, 2) for t in (q, k, v)]
    reference = F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(2, 5, 32)
    torch.testing.assert_close(out, attn.proj(reference))


def test_decoder_layer_is_post_norm_with_official_names():
    layer = ATMDecoderLayer(16, 2, 64).eval()
    assert sorted(k for k in layer.state_dict() if "attn" in k) == sorted(
        [f"self_attn.{n}" for n in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")]
        + [f"multihead_attn.{p}.{t}" for p in "qkv" for t in ("weight", "bias")]
        + ["multihead_attn.proj.weight", "multihead_attn.proj.bias"])
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 10, 16)
    out, similarity = layer(x, memory)
    sa = layer.self_attn(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1))[0].transpose(0, 1)
    x1 = layer.norm1(x + sa)
    ca, sim = layer.multihead_attn(x1, memory)
    x2 = layer.norm2(x1 + ca)
    torch.testing.assert_close(out, layer.norm3(x2 + layer.linear2(F.relu(layer.linear1(x2)))))
    torch.testing.assert_close(similarity, sim)


def _capture_decoders(head) -> list:
    records = []
    for name, module in head.named_children():
        if name.startswith("decoder_"):
            module.register_forward_hook(lambda m, args, out, name=name: records.append((name, args[1].shape, out)))
    return records


def test_atm_head_reverses_stages_and_sums_masks():
    head = ATMHead([8, 12], num_classes=3, embed_dim=16, num_heads=2, num_layers=2).eval()
    features = [torch.randn(2, 8, 6, 10), torch.randn(2, 12, 3, 5)]  # shallow (stride 16), deep (stride 32)
    records = _capture_decoders(head)
    class_logits, masks = head(features)
    assert head.input_proj_1.in_features == 12 and head.input_proj_2.in_features == 8  # stage 1 = deepest
    assert [(name, shape[1]) for name, shape, _ in records] == [("decoder_1", 15), ("decoder_2", 60)]
    sims = [out[1][-1].reshape(2, 3, *f.shape[-2:]) for (_, _, out), f in zip(records, features[::-1], strict=True)]
    first = F.interpolate(sims[0], size=(6, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(masks[0], first)
    torch.testing.assert_close(masks[1], first + sims[1])
    queries = [out[0][-1] for _, _, out in records]
    torch.testing.assert_close(class_logits, head.class_embed(torch.stack(queries)))


def test_atm_single_head_masks_are_per_layer():
    head = ATMSingleHead(16, num_classes=3, embed_dim=16, num_heads=2, num_layers=3, use_proj=False).eval()
    assert not any(k.startswith(("input_proj", "proj_norm")) for k in head.state_dict())
    records = _capture_decoders(head)
    class_logits, masks = head(torch.randn(2, 16, 4, 7))
    queries, similarities = records[0][2]
    assert class_logits.shape == (3, 2, 3, 4) and masks.shape == (3, 2, 3, 4, 7)
    for layer in range(3):
        torch.testing.assert_close(masks[layer], similarities[layer].reshape(2, 3, 4, 7))
        torch.testing.assert_close(class_logits[layer], head.class_embed(queries[layer]))


# --- inference ----------------------------------------------------------------------------------------------------


def test_semantic_scores_formula():
    class_logits = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 3.0, -1.0]]])  # (B=1, Q=2, K+1=3)
    masks = torch.tensor([[[[0.0, 1.0]], [[-2.0, 4.0]]]])  # (1, Q=2, 1, 2)
    probs = class_logits.softmax(-1)[..., :2]
    expected = torch.zeros(1, 2, 1, 2)
    for c in range(2):
        for x in range(2):
            expected[0, c, 0, x] = sum(probs[0, q, c] * torch.sigmoid(masks[0, q, 0, x]) for q in range(2))
    torch.testing.assert_close(semantic_scores(class_logits, masks), expected)


def test_forward_upsamples_masks_to_the_input_before_the_sigmoid():
    model = _tiny_segvit().eval()
    images = torch.randn(1, 3, 40, 70)
    with torch.no_grad():
        class_logits, masks = model.forward_train(images)
        scores = model(images)
    up = F.interpolate(masks[-1], size=(48, 80), mode="bilinear", align_corners=False)[..., :40, :70]
    torch.testing.assert_close(upsample_masks(masks[-1], (40, 70), 16), up)
    torch.testing.assert_close(scores, semantic_scores(class_logits[-1], up))
    # at a multiple of the patch it is the original's plain resize to the input
    plain = F.interpolate(masks[-1][..., :2, :4], size=(32, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_masks(masks[-1][..., :2, :4], (32, 64), 16), plain)


# --- loss ---------------------------------------------------------------------------------------------------------


def test_fixed_assignment():
    labels = torch.tensor([[[0, 2], [255, 2]], [[255, 255], [255, 255]], [[1, 1], [1, 3]]])
    targets, batch_index, query_index = fixed_assignment(labels, num_classes=4, ignore_index=255)
    assert targets.tolist() == [[0, 4, 2, 4], [4, 4, 4, 4], [4, 1, 4, 3]]
    assert batch_index.tolist() == [0, 0, 2, 2] and query_index.tolist() == [0, 2, 1, 3]
    with pytest.raises(ValueError, match="outside 0..3"):
        fixed_assignment(torch.tensor([[[0, 7]]]), num_classes=4, ignore_index=255)


def test_focal_and_dice_hand_values():
    logits = torch.zeros(1, 4)  # p = 0.5 everywhere
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # per pixel: ln2 * (1 - 0.5)^2 * (0.25 positives | 0.75 negatives); mean over the 4 pixels
    expected_focal = math.log(2) * 0.25 * (0.25 + 0.25 + 0.75 + 0.75) / 4
    assert sigmoid_focal_loss(logits, targets, num_masks=1.0).item() == pytest.approx(expected_focal)
    assert sigmoid_focal_loss(logits, targets, num_masks=2.0).item() == pytest.approx(expected_focal / 2)
    # dice: 1 - (2 * 1 + 1) / (2 + 2 + 1)
    assert dice_loss(logits, targets, num_masks=1.0).item() == pytest.approx(1 - 3 / 5)


def test_atm_loss_hand_made_case():
    num_classes = 2
    labels = torch.tensor([[[0, 0], [0, 255]]])  # class 0 present (the ignored pixel counts as a negative)
    class_logits = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 2.0, 0.5]]]])  # (L=1, B=1, Q=2, 3)
    masks = torch.zeros(1, 1, 2, 2, 2)
    loss_fn = ATMLoss(num_classes, patch_size=2)
    loss, parts = loss_fn(class_logits, masks, labels, ignore_index=255)
    assert list(parts) == ["loss_ce", "loss_mask", "loss_dice"]
    log_probs = class_logits[0, 0].log_softmax(-1)
    # query 0 -> class 0 (weight 1), query 1 -> no object (weight 0.1): torch's weighted mean
    expected_ce = (-log_probs[0, 0] - 0.1 * log_probs[1, 2]) / 1.1
    assert parts["loss_ce"] == pytest.approx(expected_ce.item(), rel=1e-6)
    focal = math.log(2) * 0.25 * (3 * 0.25 + 1 * 0.75) / 4  # 3 positives, the ignored pixel a negative
    assert parts["loss_mask"] == pytest.approx(20 * focal, rel=1e-6)
    assert parts["loss_dice"] == pytest.approx(1 - (2 * 1.5 + 1) / (2 + 3 + 1), rel=1e-6)
    assert loss.item() == pytest.approx(sum(parts.values()), rel=1e-6)
    weighted = ATMLoss(num_classes, patch_size=2, no_object_weight=1.0, mask_weight=1.0)
    _, plain = weighted(class_logits, masks, labels, ignore_index=255)
    assert plain["loss_ce"] == pytest.approx(F.cross_entropy(class_logits[0, 0], torch.tensor([0, 2])).item())
    assert plain["loss_mask"] == pytest.approx(focal, rel=1e-6)


def test_atm_loss_deep_supervision_and_empty_images():
    torch.manual_seed(0)
    class_logits = torch.randn(3, 2, 4, 5, requires_grad=True)
    masks = torch.randn(3, 2, 4, 3, 3, requires_grad=True)
    labels = torch.randint(0, 4, (2, 40, 40))
    loss, parts = ATMLoss(4)(class_logits, masks, labels, ignore_index=255)
    assert list(parts) == [f"loss_{n}{s}" for s in ("", "_0", "_1") for n in ("ce", "mask", "dice")]
    single, main = ATMLoss(4)(class_logits[2:], masks[2:], labels, ignore_index=255)
    assert {k: parts[k] for k in main} == pytest.approx(main)
    aux, aux_parts = ATMLoss(4)(class_logits[:1], masks[:1], labels, ignore_index=255)
    assert parts["loss_mask_0"] == pytest.approx(aux_parts["loss_mask"])
    assert loss.item() == pytest.approx(sum(parts.values()), rel=1e-5)
    # no labelled pixel: every query is "no object", the mask losses are 0 and still differentiable
    empty, empty_parts = ATMLoss(4)(class_logits, masks, torch.full((2, 40, 40), 255), ignore_index=255)
    assert empty_parts["loss_mask"] == 0 and empty_parts["loss_dice"] == 0 and math.isfinite(empty.item())
    empty.backward()
    assert masks.grad is not None and class_logits.grad is not None
    with pytest.raises(ValueError, match="class_logits"):
        ATMLoss(3)(class_logits, masks, labels, ignore_index=255)


def test_tiny_overfit_reduces_the_loss():
    torch.manual_seed(0)
    model = _tiny_segvit(num_classes=3).train()
    for module in model.modules():  # no dropout / drop path: a deterministic descent
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    images = torch.randn(2, 3, 32, 48)
    labels = torch.zeros(2, 32, 48, dtype=torch.long)
    labels[:, :, 24:] = 1
    labels[1, :16] = 2
    labels[0, 0, :5] = 255
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss, _ = model.training_loss(model.forward_train(images), labels, 255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(1)
    valid = labels != 255
    assert (predicted[valid] == labels[valid]).float().mean() > 0.9


# --- registered models --------------------------------------------------------------------------------------------


def _vit_params(dim: int, depth: int, grid: int) -> int:
    attention = (3 * dim * dim + 3 * dim) + (dim * dim + dim)  # qkv, proj
    block = 2 * 2 * dim + attention + (4 * dim * dim + 4 * dim) + (4 * dim * dim + dim)  # norms, attention, MLP
    return (3 * 256 * dim + dim) + dim + (1 + grid * grid) * dim + depth * block


def _decoder_layer_params(dim: int) -> int:
    attention = 4 * dim * dim + 4 * dim  # q, k, v, out (fused in_proj or separate linears)
    return 2 * attention + (4 * dim * dim + 4 * dim) + (4 * dim * dim + dim) + 3 * 2 * dim


def _expected_params(variant: str, num_classes: int = 150) -> int:
    spec = SEGVIT_VARIANTS[variant]
    dim, depth = {"b": (768, 12), "l": (1024, 24)}[spec.backbone]
    grid, d = spec.img_size // 16, spec.head_dim
    classes = num_classes * d + d * (num_classes + 1) + num_classes + 1  # class queries + class_embed
    stage = dim * d + d + 2 * d + 3 * _decoder_layer_params(d)  # input_proj, proj_norm, 3 decoder layers
    if spec.shrink_index is None:
        head = len(spec.out_indices) * stage + classes
    else:
        head = len(spec.out_indices) * stage + grid * grid * d + 3 * _decoder_layer_params(d) + classes
    return _vit_params(dim, depth, grid) + head


@pytest.mark.parametrize("variant,count", [("vit_b", 108_736_279), ("vit_l", 344_305_303),
                                           ("shrunk_vit_l", 344_598_679)])
def test_registered_parameter_counts(variant, count):
    with torch.device("meta"):
        model = create_model(f"segvit_{variant}")
    total = sum(p.numel() for p in model.parameters())
    assert total == _expected_params(variant) == count
    assert model.output_stride == 1 and model.num_classes == 150 and len(model.aux_heads) == 0
    assert model.backbone.with_cls_token is False and model.backbone.norm is None
    assert model.backbone.out_indices == SEGVIT_VARIANTS[variant].out_indices


def test_vit_b_gflops_match_the_readme():
    from seglab.tools.flops import count_flops

    with torch.device("meta"):
        model = create_model("segvit_vit_b")
    gflops = count_flops(model, 512) / 1e9
    assert gflops == pytest.approx(SEGVIT_VARIANTS["vit_b"].published_gflops, rel=0.01)


# --- official checkpoints -----------------------------------------------------------------------------------------


def _official_manifest(variant: str, num_classes: int = 150, img_size: int | None = None) -> dict[str, tuple]:
    """Keys and shapes of an official SegViT checkpoint (mmseg 0.24 ViT + ATMHead / TPNATMHead + the loss buffer)."""
    spec = SEGVIT_VARIANTS[variant]
    dim, depth = {"b": (768, 12), "l": (1024, 24)}[spec.backbone]
    grid, d = (img_size or spec.img_size) // 16, spec.head_dim
    keys: dict[str, tuple] = {
        "backbone.cls_token": (1, 1, dim), "backbone.pos_embed": (1, 1 + grid * grid, dim),
        "backbone.patch_embed.projection.weight": (dim, 3, 16, 16), "backbone.patch_embed.projection.bias": (dim,),
    }
    for i in range(depth):
        p = f"backbone.layers.{i}."
        keys.update({p + "ln1.weight": (dim,), p + "ln1.bias": (dim,), p + "ln2.weight": (dim,), p + "ln2.bias": (dim,),
                     p + "attn.attn.in_proj_weight": (3 * dim, dim), p + "attn.attn.in_proj_bias": (3 * dim,),
                     p + "attn.attn.out_proj.weight": (dim, dim), p + "attn.attn.out_proj.bias": (dim,),
                     p + "ffn.layers.0.0.weight": (4 * dim, dim), p + "ffn.layers.0.0.bias": (4 * dim,),
                     p + "ffn.layers.1.weight": (dim, 4 * dim), p + "ffn.layers.1.bias": (dim,)})

    def layer(prefix: str, atm: bool) -> None:
        keys.update({prefix + "self_attn.in_proj_weight": (3 * d, d), prefix + "self_attn.in_proj_bias": (3 * d,),
                     prefix + "self_attn.out_proj.weight": (d, d), prefix + "self_attn.out_proj.bias": (d,),
                     prefix + "linear1.weight": (4 * d, d), prefix + "linear1.bias": (4 * d,),
                     prefix + "linear2.weight": (d, 4 * d), prefix + "linear2.bias": (d,)})
        keys.update({f"{prefix}norm{n}.{t}": (d,) for n in (1, 2, 3) for t in ("weight", "bias")})
        if atm:
            keys.update({f"{prefix}multihead_attn.{n}.weight": (d, d) for n in ("q", "k", "v", "proj")})
            keys.update({f"{prefix}multihead_attn.{n}.bias": (d,) for n in ("q", "k", "v", "proj")})
        else:
            keys.update({prefix + "multihead_attn.in_proj_weight": (3 * d, d),
                         prefix + "multihead_attn.in_proj_bias": (3 * d,),
                         prefix + "multihead_attn.out_proj.weight": (d, d),
                         prefix + "multihead_attn.out_proj.bias": (d,)})

    shrunk = spec.shrink_index is not None
    for s in range(1, len(spec.out_indices) + 1):
        keys.update({f"decode_head.input_proj_{s}.weight": (d, dim), f"decode_head.input_proj_{s}.bias": (d,),
                     f"decode_head.proj_norm_{s}.weight": (d,), f"decode_head.proj_norm_{s}.bias": (d,)})
        for j in range(3):
            layer(f"decode_head.decoder_{s}.layers.{j}.", atm=not shrunk)
    classes = "decode_head.atm." if shrunk else "decode_head."
    if shrunk:
        keys["decode_head.q.weight"] = (grid * grid, d)
        for j in range(3):
            layer(f"decode_head.atm.decoder_1.layers.{j}.", atm=True)
    keys.update({classes + "q.weight": (num_classes, d), classes + "class_embed.weight": (num_classes + 1, d),
                 classes + "class_embed.bias": (num_classes + 1,),
                 "decode_head.loss_decode.criterion.empty_weight": (num_classes + 1,)})
    return keys


def _meta_state(manifest: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}


@pytest.mark.parametrize("variant", list(SEGVIT_VARIANTS))
def test_official_checkpoint_converts_and_loads_strictly(variant):
    source = _meta_state(_official_manifest(variant))
    result = convert_segvit_official(source, f"segvit_{variant}")
    assert result.num_classes == 150 and result.overrides == {}
    assert result.dropped == ["decode_head.loss_decode.criterion.empty_weight"]
    qkv = source["backbone.layers.3.attn.attn.in_proj_weight"]
    assert result.state_dict["backbone.blocks.3.attn.qkv.weight"] is qkv
    assert result.state_dict["decode_head.q.weight"] is source["decode_head.q.weight"]
    with torch.device("meta"):
        model = create_model(f"segvit_{variant}", num_classes=result.num_classes, **result.overrides)
    model.load_state_dict(result.state_dict, strict=True, assign=True)


def test_official_conversion_reads_classes_and_crop_and_refuses_other_layouts():
    source = _meta_state(_official_manifest("vit_l", num_classes=171, img_size=512))  # COCO-Stuff-10k ViT-L
    result = convert_segvit_official(source, "segvit_vit_l")
    assert result.num_classes == 171 and result.overrides == {"img_size": 512}
    with pytest.raises(ValueError, match="not understood"):
        convert_segvit_official({**source, "decode_head.conv_seg.weight": torch.empty(1)}, "segvit_vit_l")
    with pytest.raises(ValueError, match="does not fit|not understood"):
        convert_segvit_official(_meta_state(_official_manifest("vit_b")), "segvit_shrunk_vit_l")
    with pytest.raises(ValueError, match="segvit_vit_b"):
        convert_segvit_official(source, "segformer_b0")
