"""MaskFormer: matcher and loss on hand-made cases, a tiny overfit, shapes, parameter counts, official converter."""

from __future__ import annotations

import math

import pytest
import torch

import seglab
from seglab.backbones.swin import SwinConfig, SwinTransformer
from seglab.convert.maskformer import convert_maskformer_official
from seglab.heads.maskformer import semantic_scores, sine_position_embedding
from seglab.losses.maskformer import (
    HungarianMatcher,
    MaskFormerLoss,
    pairwise_dice_cost,
    pairwise_focal_cost,
    semantic_targets,
)
from seglab.models.maskformer import MaskFormerOptions, maskformer

BIG = 10.0


def test_semantic_targets_one_mask_per_present_class():
    labels = torch.tensor([[[3, 3, 255], [1, 3, 255]]])
    (classes, masks), = semantic_targets(labels, num_classes=5, ignore_index=255)
    assert classes.tolist() == [1, 3]
    assert masks.tolist() == [[[0, 0, 0], [1, 0, 0]], [[1, 1, 0], [0, 1, 0]]]
    with pytest.raises(ValueError, match="0..4"):
        semantic_targets(torch.tensor([[[5]]]), num_classes=5)


def test_pairwise_costs_match_hand_values():
    logits = torch.zeros(1, 4)  # probability 0.5 everywhere
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # focal: alpha 0.25 on positives, 0.75 on negatives, times (1 - 0.5)^2 * ln 2, averaged over the 4 pixels
    expected_focal = (2 * 0.25 + 2 * 0.75) / 4 * 0.25 * math.log(2)
    assert pairwise_focal_cost(logits, targets).item() == pytest.approx(expected_focal, rel=1e-6)
    # dice: 1 - (2 * 1 + 1) / (2 + 2 + 1)
    assert pairwise_dice_cost(logits, targets).item() == pytest.approx(0.4, rel=1e-6)


def test_matcher_finds_the_known_assignment():
    # 3 queries, 2 classes + no-object; target 0 is class 1 on the left column, target 1 class 0 on the right
    masks = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    classes = torch.tensor([1, 0])
    mask_logits = torch.stack([BIG * (2 * masks[1] - 1), torch.zeros(2, 2), BIG * (2 * masks[0] - 1)])[None]
    class_logits = torch.tensor([[[BIG, 0.0, 0.0], [0.0, 0.0, BIG], [0.0, BIG, 0.0]]])
    (queries, targets), = HungarianMatcher()(class_logits, mask_logits, [(classes, masks)])
    assert queries.tolist() == [0, 2] and targets.tolist() == [1, 0]
    # the mask costs alone decide when the class scores are uninformative
    (queries, targets), = HungarianMatcher()(torch.zeros(1, 3, 3), mask_logits, [(classes, masks)])
    assert queries.tolist() == [0, 2] and targets.tolist() == [1, 0]


def test_matcher_resizes_targets_to_the_prediction_and_handles_no_target():
    masks = torch.zeros(1, 8, 8)
    masks[0, :, 4:] = 1  # right half
    mask_logits = torch.stack([-BIG * torch.ones(4, 4), BIG * (torch.arange(4) >= 2).float().expand(4, 4) * 2 - BIG])
    (queries, targets), = HungarianMatcher()(torch.zeros(1, 2, 3), mask_logits[None], [(torch.tensor([0]), masks)])
    assert queries.tolist() == [1] and targets.tolist() == [0]
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, 8, 8))
    (queries, targets), = HungarianMatcher()(torch.zeros(1, 2, 3), mask_logits[None], [empty])
    assert queries.numel() == 0 and targets.numel() == 0


def test_loss_values_on_a_hand_made_case():
    labels = torch.tensor([[[0, 0], [1, 255]]])  # class 0: 2 pixels, class 1: 1 pixel, 1 ignored (negative)
    num_classes, queries = 2, 4
    class_logits = torch.zeros(1, 1, queries, num_classes + 1)  # uniform: CE is log 3 whatever the weights
    mask_logits = torch.zeros(1, 1, queries, 2, 2)
    loss, parts = MaskFormerLoss(num_classes)(class_logits, mask_logits, labels, ignore_index=255)
    focal = ((2 * 0.25 + 2 * 0.75) / 4 + (1 * 0.25 + 3 * 0.75) / 4) / 2 * 0.25 * math.log(2)
    dice = ((1 - 3 / 5) + (1 - 2 / 4)) / 2
    assert parts["loss_ce"] == pytest.approx(math.log(3), rel=1e-5)
    assert parts["loss_mask"] == pytest.approx(20 * focal, rel=1e-5)
    assert parts["loss_dice"] == pytest.approx(dice, rel=1e-5)
    assert parts["loss_aux"] == 0.0
    assert loss.item() == pytest.approx(math.log(3) + 20 * focal + dice, rel=1e-5)


def test_loss_weights_no_object_and_sums_auxiliary_outputs():
    labels = torch.tensor([[[1, 1], [1, 1]]])
    class_logits = torch.zeros(1, 1, 2, 3)
    class_logits[0, 0, 0, 1] = BIG  # query 0 predicts class 1; query 1 is uniform and unmatched (no object)
    mask_logits = torch.full((1, 1, 2, 2, 2), BIG)
    _, parts = MaskFormerLoss(2)(class_logits, mask_logits, labels)
    matched = -torch.log_softmax(class_logits[0, 0, 0], -1)[1].item()
    expected = (matched * 1.0 + math.log(3) * 0.1) / (1.0 + 0.1)  # weighted mean over queries
    assert parts["loss_ce"] == pytest.approx(expected, rel=1e-5)
    # two layers: the auxiliary (first) output's weighted loss is reported apart and added to the total
    stacked = MaskFormerLoss(2)(class_logits.expand(2, -1, -1, -1), mask_logits.expand(2, -1, -1, -1, -1), labels)
    single = MaskFormerLoss(2)(class_logits, mask_logits, labels)
    assert stacked[0].item() == pytest.approx(2 * single[0].item(), rel=1e-6)
    assert stacked[1]["loss_aux"] == pytest.approx(single[0].item(), rel=1e-6)


def test_sine_position_embedding_values():
    pos = sine_position_embedding(2, 3, num_feats=4, device=torch.device("cpu"), dtype=torch.float32)
    assert pos.shape == (6, 8)
    scale = 2 * math.pi
    # token (row 1, col 2): y = 2 / 2 * 2 pi, x = 3 / 3 * 2 pi; frequencies 1, 1, 100, 100 for 4 features
    y = x = 1.0 * scale
    expected = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100),
                math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    assert pos[5].tolist() == pytest.approx(expected, abs=1e-5)
    assert pos[0, 0].item() == pytest.approx(math.sin(0.5 * scale), abs=1e-5)


def _tiny(num_classes: int = 3):
    backbone = SwinTransformer(SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4),
                               drop_path_rate=0.0)
    options = MaskFormerOptions(num_classes=num_classes, conv_dim=32, mask_dim=32, hidden_dim=32, num_queries=8,
                                num_heads=2, ffn_dim=64, dec_layers=2, dropout=0.0)
    return maskformer(backbone, options)


def test_shapes_and_semantic_inference():
    model = _tiny().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        scores = model(x)
        class_logits, mask_logits = model.forward_train(x)
    assert scores.shape == (2, 3, 16, 24) and model.output_stride == 4 and len(model.aux_heads) == 0
    assert class_logits.shape == (2, 2, 8, 4) and mask_logits.shape == (2, 2, 8, 16, 24)
    assert torch.allclose(scores, semantic_scores(class_logits[-1], mask_logits[-1]), atol=1e-6)
    manual = (class_logits[-1].softmax(-1)[..., :-1, None, None] * mask_logits[-1].sigmoid()[:, :, None]).sum(1)
    assert torch.allclose(scores, manual, atol=1e-5)


def test_tiny_overfit_loss_decreases():
    torch.manual_seed(0)
    model = _tiny().train()
    # 64x64: the deepest map must hold more than one token, or cross attention cannot tell the queries apart
    images = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[0, :, 32:] = 1
    labels[1, 32:] = 2
    labels[1, :8] = 255
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, parts = model.training_loss(model.forward_train(images), labels, 255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(parts) == {"loss_ce", "loss_mask", "loss_dice", "loss_aux"}
    assert losses[-1] < 0.3 * losses[0], losses
    model.eval()
    with torch.no_grad():
        prediction = model(images).argmax(1)
    target = labels[:, ::4, ::4]
    valid = target != 255
    assert (prediction[valid] == target[valid]).float().mean() > 0.9


# name -> (exact parameter count at 150 classes, published millions)
PARAMS = {
    "maskformer_r50": (41_307_863, 41),
    "maskformer_r101": (60_299_991, 60),
    "maskformer_swin_t": (41_757_009, 42),
    "maskformer_swin_s": (63_074_913, 63),
    "maskformer_swin_b": (101_829_391, 102),
    "maskformer_swin_l": (211_575_627, 212),
}


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_counts_match_the_paper(name):
    with torch.device("meta"):
        model = seglab.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    exact, published = PARAMS[name]
    assert count == exact
    assert round(count / 1e6) == published
    assert model.num_classes == 150 and model.output_stride == 4


def _official_r50_manifest(num_classes: int = 150) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of a detectron2 MaskFormer-R50 checkpoint (`model_final.pkl` `model` dict)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_norm(name: str, out: int, inp: int, k: int) -> None:
        shapes[f"{name}.weight"] = (out, inp, k, k)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.norm.{leaf}"] = (out,)

    conv_norm("backbone.stem.conv1", 64, 3, 7)
    inp = 64
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3), strict=True):
        width = 64 * 2 ** (stage - 2)
        for b in range(blocks):
            if b == 0:
                conv_norm(f"backbone.res{stage}.0.shortcut", 4 * width, inp, 1)
            conv_norm(f"backbone.res{stage}.{b}.conv1", width, inp if b == 0 else 4 * width, 1)
            conv_norm(f"backbone.res{stage}.{b}.conv2", width, width, 3)
            conv_norm(f"backbone.res{stage}.{b}.conv3", 4 * width, width, 1)
        inp = 4 * width
    return shapes | _official_head_manifest((256, 512, 1024, 2048), num_classes)


def _official_head_manifest(backbone_channels: tuple[int, ...], num_classes: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the detectron2 MaskFormer head (`sem_seg_head.*`) over a backbone with these channels."""
    shapes: dict[str, tuple[int, ...]] = {}
    px = "sem_seg_head.pixel_decoder"
    for k, channels in enumerate(backbone_channels, start=1):
        if k < 4:
            shapes[f"{px}.adapter_{k}.weight"] = (256, channels, 1, 1)
            shapes[f"{px}.adapter_{k}.norm.weight"] = shapes[f"{px}.adapter_{k}.norm.bias"] = (256,)
        shapes[f"{px}.layer_{k}.weight"] = (256, channels if k == 4 else 256, 3, 3)
        shapes[f"{px}.layer_{k}.norm.weight"] = shapes[f"{px}.layer_{k}.norm.bias"] = (256,)
    shapes[f"{px}.mask_features.weight"], shapes[f"{px}.mask_features.bias"] = (256, 256, 3, 3), (256,)
    pr = "sem_seg_head.predictor"
    shapes[f"{pr}.query_embed.weight"] = (100, 256)
    shapes[f"{pr}.input_proj.weight"], shapes[f"{pr}.input_proj.bias"] = (256, backbone_channels[-1], 1, 1), (256,)
    for i in range(6):
        layer = f"{pr}.transformer.decoder.layers.{i}"
        for attn in ("self_attn", "multihead_attn"):
            shapes[f"{layer}.{attn}.in_proj_weight"], shapes[f"{layer}.{attn}.in_proj_bias"] = (768, 256), (768,)
            shapes[f"{layer}.{attn}.out_proj.weight"], shapes[f"{layer}.{attn}.out_proj.bias"] = (256, 256), (256,)
        shapes[f"{layer}.linear1.weight"], shapes[f"{layer}.linear1.bias"] = (2048, 256), (2048,)
        shapes[f"{layer}.linear2.weight"], shapes[f"{layer}.linear2.bias"] = (256, 2048), (256,)
        for n in (1, 2, 3):
            shapes[f"{layer}.norm{n}.weight"] = shapes[f"{layer}.norm{n}.bias"] = (256,)
    shapes[f"{pr}.transformer.decoder.norm.weight"] = shapes[f"{pr}.transformer.decoder.norm.bias"] = (256,)
    shapes[f"{pr}.class_embed.weight"], shapes[f"{pr}.class_embed.bias"] = (num_classes + 1, 256), (num_classes + 1,)
    for j in range(3):
        shapes[f"{pr}.mask_embed.layers.{j}.weight"], shapes[f"{pr}.mask_embed.layers.{j}.bias"] = (256, 256), (256,)
    shapes["criterion.empty_weight"] = (num_classes + 1,)
    return shapes


def test_official_r50_checkpoint_converts_and_loads():
    generator = torch.Generator().manual_seed(0)
    source = {k: torch.randn(shape, generator=generator) for k, shape in _official_r50_manifest().items()}
    result = convert_maskformer_official(source, "maskformer_r50")
    assert result.num_classes == 150 and result.overrides == {"official_inference": True} and result.dropped == ["criterion.empty_weight"]
    state = result.state_dict
    fused = source["sem_seg_head.predictor.transformer.decoder.layers.3.multihead_attn.in_proj_weight"]
    cross = "decode_head.predictor.decoder.layers.3.cross_attn"
    assert torch.equal(torch.cat([state[f"{cross}.{p}_proj.weight"] for p in "qkv"]), fused)
    assert torch.equal(state["decode_head.pixel_decoder.output_convs.3.conv.weight"],
                       source["sem_seg_head.pixel_decoder.layer_4.weight"])
    assert torch.equal(state["decode_head.pixel_decoder.lateral_convs.0.norm.bias"],
                       source["sem_seg_head.pixel_decoder.adapter_1.norm.bias"])
    assert torch.equal(state["backbone.layer4.0.downsample.1.running_var"],
                       source["backbone.res5.0.shortcut.norm.running_var"])
    with torch.device("meta"):
        model = seglab.create_model("maskformer_r50", num_classes=result.num_classes)
    model.load_state_dict(state, strict=True, assign=True)
    source["backbone.res9.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="res9"):
        convert_maskformer_official(source, "maskformer_r50")


def test_official_swin_t_checkpoint_converts_and_loads():
    from test_swin import _random_state, _swin_t_official_manifest  # tests/unit is on sys.path (rootdir-less tests)

    backbone = {k: v for k, v in _swin_t_official_manifest().items() if k.startswith("backbone.")}
    source = _random_state(backbone | _official_head_manifest((96, 192, 384, 768), num_classes=150))
    result = convert_maskformer_official(source, "maskformer_swin_t")
    assert result.num_classes == 150 and result.overrides == {"official_inference": True, "shrink_window": False}
    state = result.state_dict
    assert torch.equal(state["backbone.out_norms.3.weight"], source["backbone.norm3.weight"])
    assert torch.equal(state["backbone.stages.2.blocks.5.attn.qkv.weight"],
                       source["backbone.layers.2.blocks.5.attn.qkv.weight"])
    assert torch.equal(state["decode_head.pixel_decoder.lateral_convs.0.conv.weight"],
                       source["sem_seg_head.pixel_decoder.adapter_1.weight"])
    with torch.device("meta"):
        model = seglab.create_model("maskformer_swin_t", num_classes=result.num_classes)
    model.load_state_dict(state, strict=True, assign=True)
    with pytest.raises(ValueError, match="maskformer_swin_s|shape"):  # a Swin-T checkpoint is not a Swin-S model
        convert_maskformer_official(source, "maskformer_swin_s")


class _ConvBackbone(torch.nn.Module):
    """Four strided convs (strides 4, 8, 16, 32): a backbone that exports fast, to test the head's graph."""

    def __init__(self) -> None:
        super().__init__()
        from seglab.backbones.base import FeatureInfo

        widths = (8, 16, 24, 32)
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(i, o, 4 if k == 0 else 2, stride=4 if k == 0 else 2)
            for k, (i, o) in enumerate(zip((3, *widths[:-1]), widths, strict=True))
        )
        self.feature_info = [FeatureInfo(channels=w, stride=4 * 2**k) for k, w in enumerate(widths)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for conv in self.convs:
            x = conv(x)
            outs.append(x)
        return outs


@pytest.mark.onnx
def test_onnx_export_matches_eager_at_two_sizes(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from seglab.export.onnx import check_onnx, export_onnx

    options = MaskFormerOptions(num_classes=3, conv_dim=32, mask_dim=32, hidden_dim=32, num_queries=8, num_heads=2,
                                ffn_dim=64, dec_layers=2, dropout=0.0)
    model = maskformer(_ConvBackbone(), options).eval()
    path = export_onnx(model, tmp_path / "maskformer.onnx", height=64, width=96)
    assert check_onnx(model, path, sizes=((64, 96), (96, 128))) <= 1e-4
