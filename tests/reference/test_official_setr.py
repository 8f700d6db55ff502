"""SETR against the original fudan-zvg/SETR code (`official.setr`, written from the repository) with the same random
weights, converted by `seglab.convert.setr.convert_setr_official` (what `convert_checkpoint(..., "official", ...)`
calls) with the `layers` override that a reduced encoder needs (the keys cannot tell which blocks the heads read).

The original encoder asserts that the input is exactly its `img_size` (no position-embedding resampling), so the
comparison runs at the native size: 80x80, a 5x5 token grid (odd, not a multiple of 32). The encoder is shrunk to
ViT-T (192 wide, 12 blocks, 3 heads) through seglab's `layers` override, with the heads reading blocks (3, 5, 7, 11)
(MLA: `mla_index`; Naive / PUP: the main head's `in_index` 11 and the auxiliary heads' 3, 5, 7, plus 11 for PUP's
fourth); the original heads keep their hard-coded 256 channels. The whole-model state dict is wrapped as mmcv saves
it (`{"meta": ..., "state_dict": ...}`). Main logits are compared at the input size (the original's output against
`seglab.inference.whole_inference`), and every auxiliary head's logits too (seglab's `forward_train`, resized to the
input the same way).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from official.mmcv_lite import EncoderDecoder
from official.setr.vit import VisionTransformer
from official.setr.vit_mla import VIT_MLA
from official.setr.vit_mla_auxi_head import VIT_MLA_AUXIHead
from official.setr.vit_mla_head import VIT_MLAHead
from official.setr.vit_up_head import VisionTransformerUpHead
from testkit import compare, randomize_

from seglab import create_model
from seglab.checkpoint import unwrap_state_dict
from seglab.convert.setr import convert_setr_official
from seglab.inference import whole_inference

pytestmark = pytest.mark.reference

IMG, NCLS = 80, 7
VIT_T = {"embed_dim": 192, "depth": 12, "num_heads": 3}
LAYERS = (3, 5, 7, 11)
NORM_CFG = {"type": "SyncBN", "requires_grad": True}


def _up_head(in_index: int, num_conv: int, num_upsampe_layer: int, conv3x3_conv1x1: bool) -> VisionTransformerUpHead:
    return VisionTransformerUpHead(in_channels=192, channels=512, in_index=in_index, img_size=IMG, embed_dim=192,
                                   num_classes=NCLS, norm_cfg=NORM_CFG, num_conv=num_conv,
                                   num_upsampe_layer=num_upsampe_layer, conv3x3_conv1x1=conv3x3_conv1x1,
                                   align_corners=False)


def _official(variant: str) -> EncoderDecoder:
    """The `configs/SETR/SETR_{Naive,PUP,MLA}_512x512_160k_ade20k_bs_16.py` models at ViT-T width and 80 px."""
    if variant == "mla":
        backbone = VIT_MLA(img_size=IMG, drop_rate=0.0, norm_cfg=NORM_CFG, mla_channels=256, mla_index=LAYERS,
                           **VIT_T)
        head = VIT_MLAHead(
            in_channels=192, channels=512, img_size=IMG, mla_channels=256, mlahead_channels=128, num_classes=NCLS,
            norm_cfg=NORM_CFG, align_corners=False)
        aux = [VIT_MLA_AUXIHead(in_channels=256, channels=512, in_index=i, img_size=IMG, num_classes=NCLS,
                                align_corners=False) for i in range(4)]
    else:
        backbone = VisionTransformer(img_size=IMG, drop_rate=0.0, norm_cfg=NORM_CFG, **VIT_T)
        if variant == "naive":
            head = _up_head(LAYERS[-1], num_conv=2, num_upsampe_layer=1, conv3x3_conv1x1=False)
            aux = [_up_head(i, num_conv=2, num_upsampe_layer=1, conv3x3_conv1x1=False) for i in LAYERS[:3]]
        else:
            head = _up_head(LAYERS[-1], num_conv=4, num_upsampe_layer=4, conv3x3_conv1x1=True)
            aux = [_up_head(i, num_conv=2, num_upsampe_layer=2, conv3x3_conv1x1=True) for i in LAYERS]
    model = EncoderDecoder(backbone, head, torch.nn.ModuleList(aux)).eval()
    randomize_(model, seed=11)
    with torch.no_grad():  # tokens of a typical scale: the position embedding and class token ~ N(0, 0.5^2)
        model.backbone.pos_embed.normal_(0, 0.5, generator=torch.Generator().manual_seed(12))
        model.backbone.cls_token.normal_(0, 0.5, generator=torch.Generator().manual_seed(13))
    return model


@pytest.mark.parametrize("variant", ["naive", "pup", "mla"])
@torch.no_grad()
def test_setr_matches_the_original_code(variant):
    reference = _official(variant)
    model_name = f"setr_{variant}_vit_l"
    checkpoint = {"meta": {"mmseg_version": "0.5.0"}, "state_dict": reference.state_dict()}
    # the blocks the heads read are not in the keys: for a reduced ViT they are passed, as `overrides`
    result = convert_setr_official(unwrap_state_dict(checkpoint, "SETR"), model_name, overrides={"layers": LAYERS})
    assert result.num_classes == NCLS and result.overrides["vit"] == "t" and result.overrides["img_size"] == IMG
    dropped = [k for k in result.dropped if k.endswith("conv_seg.weight")]
    assert len(dropped) == 1 + len(reference.auxiliary_head)  # the unused `conv_seg` of every head
    ours = create_model(model_name, num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)

    x = torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    expected = reference.encode_decode(x)
    assert expected.shape == (1, NCLS, IMG, IMG) and expected.std() > 0.1
    compare(whole_inference(ours, x), expected, pair=f"setr/official {variant} logits")

    features = reference.extract_feat(x)
    _, aux_logits = ours.forward_train(x)
    assert len(aux_logits) == len(reference.auxiliary_head)
    for j, (head, logits) in enumerate(zip(reference.auxiliary_head, aux_logits, strict=True)):
        resized = F.interpolate(logits, size=(IMG, IMG), mode="bilinear", align_corners=False)
        compare(resized, head(features), pair=f"setr/official {variant} auxiliary head {j}")
