"""SegViT against the official zbwxp/SegVit code (`official.segvit`, written from the repository, on mmseg 0.24's ViT)
with the same random weights, converted by `seglab.convert.segvit.convert_segvit_official` (source `official`).

Models: `segvit_vit_b` (ATMHead, three stages) and `segvit_shrunk_vit_l` (vit_shrink + TPNATMHead), both shrunk to
ViT-T (192 wide, 12 blocks, 3 heads; head 96 wide with 3 heads) through seglab's `vit` / `out_indices` /
`shrink_index` overrides, which the converter takes as `overrides` (the keys cannot tell which blocks the head reads).
The official head assumes square token maps of an even count (`d3_to_d4` drops a token of an odd count; the Shrunk
backbone halves the grid) and resizes its masks to `(img_size, img_size)`, so it runs only at its square training
crop: 96x96 here (a 6x6 grid; every even grid is a multiple of 32 px). The state dict is wrapped as mmcv saves it
and holds the loss buffers `decode_head.loss_decode.criterion.empty_weight` (and `decode_head.atm.loss_decode...` for
Shrunk), which the converter drops.

Compared: the class logits and the mask logits of every decoder output (the deep-supervision ones included) and the
semantic scores `softmax(class)[:K] x sigmoid(mask)` at the input size.
"""

from __future__ import annotations

import pytest
import torch
from official.mmcv_lite import EncoderDecoder
from official.segvit.atm_head import ATMHead
from official.segvit.mmseg_vit import VisionTransformer
from official.segvit.tpn_atm_head import TPNATMHead
from official.segvit.vit_shrink import vit_shrink
from testkit import compare, normal_, randomize_

from seglab import create_model
from seglab.checkpoint import unwrap_state_dict
from seglab.convert.segvit import convert_segvit_official

pytestmark = pytest.mark.reference

IMG, NCLS = 96, 5
VIT_T = {"embed_dims": 192, "num_layers": 12, "num_heads": 3}
# seglab overrides of the reduced models, and the official configs they mirror
OVERRIDES = {
    "segvit_vit_b": {"vit": "t", "out_indices": (5, 7, 11)},  # `_base_/models/seg_vit-b16.py`
    "segvit_shrunk_vit_l": {"vit": "t", "out_indices": (7, 11), "shrink_index": 8},  # `shrink/..._shrink8_tpnatm.py`
}


def _official(model_name: str) -> EncoderDecoder:
    out_indices = list(OVERRIDES[model_name]["out_indices"])
    backbone_args = {"img_size": (IMG, IMG), "patch_size": 16, "in_channels": 3, "drop_path_rate": 0.1,
                     "out_indices": out_indices, "final_norm": False, "norm_eps": 1e-6, "with_cls_token": False,
                     "interpolate_mode": "bicubic", **VIT_T}
    head_args = {"img_size": IMG, "in_channels": 192, "channels": 192, "num_classes": NCLS, "num_layers": 3,
                 "num_heads": 3, "use_stages": len(out_indices), "embed_dims": 96,
                 "loss_decode": {"type": "ATMLoss", "num_classes": NCLS, "dec_layers": 3, "loss_weight": 1.0}}
    if model_name == "segvit_vit_b":
        model = EncoderDecoder(VisionTransformer(**backbone_args), ATMHead(**head_args))
    else:
        model = EncoderDecoder(vit_shrink(shrink_idx=8, **backbone_args), TPNATMHead(**head_args))
    model.eval()
    randomize_(model, seed=21)
    # tokens of a typical scale: the position embedding ~ N(0, 0.5^2), the class queries ~ N(0, 1)
    head = model.decode_head.atm if hasattr(model.decode_head, "atm") else model.decode_head
    normal_(22, (model.backbone.pos_embed, 0.5), (head.q.weight, 1.0))
    return model


@pytest.mark.parametrize("model_name", ["segvit_vit_b", "segvit_shrunk_vit_l"])
@torch.no_grad()
def test_segvit_matches_the_official_code(model_name):
    reference = _official(model_name)
    checkpoint = {"meta": {"mmseg_version": "0.24.0"}, "state_dict": reference.state_dict()}
    state = unwrap_state_dict(checkpoint, "SegViT")
    result = convert_segvit_official(state, model_name, overrides=OVERRIDES[model_name])
    assert result.num_classes == NCLS and result.overrides["img_size"] == IMG
    assert {k for k in result.dropped if "loss_decode" in k} == {k for k in state if "loss_decode" in k}
    ours = create_model(model_name, num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)

    x = torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    class_logits, masks = ours.forward_train(x)
    ref_class, ref_masks, _ = reference.decode_head.forward_raw(reference.extract_feat(x))
    assert class_logits.shape == ref_class.shape and masks.shape == ref_masks.shape
    assert ref_class.std() > 0.1 and ref_masks.std() > 0.1
    compare(class_logits, ref_class, pair=f"segvit/official {model_name} class logits")
    compare(masks, ref_masks, pair=f"segvit/official {model_name} mask logits")

    expected = reference.encode_decode(x)
    assert expected.shape == (1, NCLS, IMG, IMG)
    compare(ours(x), expected, pair=f"segvit/official {model_name} semantic scores")
