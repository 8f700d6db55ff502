"""MaskFormer against the official facebookresearch/MaskFormer code (`official.maskformer`, written from the repository
and the detectron2 parts it builds on: ResNet with FrozenBN, `Conv2d` with norm, `ImageList` padding,
`sem_seg_postprocess`) with the same random weights, converted by `seglab.convert` (source `official`).

Models: `maskformer_r50` (detectron2 R50, `configs/ade20k-150/maskformer_R50_bs16_160k.yaml`) and `maskformer_swin_t`
(`swin/maskformer_swin_tiny_bs16_160k.yaml`), 100 queries, 6 decoder layers, at their real sizes (seglab takes no width
overrides for these backbones). The state dict is wrapped as detectron2 stores it (`{"model": ...}`) and holds
`criterion.empty_weight`, which the converter drops.

The official model zero-pads the normalised image to a multiple of 32 before the backbone (`size_divisibility`) and
passes no padding mask to the transformer; seglab's model is given that padded tensor. Compared: the class and mask
logits of every decoder layer (deep supervision) on the padded input, and the semantic map. The official map
upsamples the mask logits to the padded size, applies the sigmoid, sums over the queries and crops; seglab computes
exactly that with the model option `official_inference=True` (from the unpadded image), which the converter sets:
asserted here. seglab's default `forward` returns the scores of the unpadded image at stride 4 (sigmoid before the resize): its difference
from the official map is printed, not asserted.

Inputs: 75x93 (padded to 96x96: Swin stage maps 24, 12, 6 and 3, the last two smaller than the 7x7 window, which the
official Swin keeps, padding and shifting: the converter sets `shrink_window=False` for that).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from official.maskformer.mask_former_model import maskformer_ade20k
from testkit import compare, randomize_

from seglab import create_model
from seglab.convert import convert_checkpoint

pytestmark = pytest.mark.reference

NCLS = 7


def _official(backbone: str, seed: int):
    model = maskformer_ade20k(backbone, num_classes=NCLS).eval()
    randomize_(model, seed)
    with torch.no_grad():  # queries of a typical scale
        model.sem_seg_head.predictor.query_embed.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(seed))
    return model


def _compare(model_name: str, backbone: str, size: tuple[int, int]) -> None:
    reference = _official(backbone, seed=51)
    result = convert_checkpoint({"model": reference.state_dict()}, "official", model_name)
    swin = {"shrink_window": False} if "swin" in model_name else {}
    assert result.overrides == {"official_inference": True, **swin}
    assert result.num_classes == NCLS and result.dropped == ["criterion.empty_weight"]
    ours = create_model(model_name, num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)

    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        expected = reference([{"image": image}])[0]["sem_seg"]
        normalised = (image - reference.pixel_mean) / reference.pixel_std
        padded, _, outputs = reference.raw_outputs([normalised])
        class_logits, mask_logits = ours.forward_train(padded)
    ref_class = torch.stack([*(a["pred_logits"] for a in outputs["aux_outputs"]), outputs["pred_logits"]])
    ref_masks = torch.stack([*(a["pred_masks"] for a in outputs["aux_outputs"]), outputs["pred_masks"]])
    assert class_logits.shape == ref_class.shape == (6, 1, 100, NCLS + 1)
    assert mask_logits.shape == ref_masks.shape and ref_masks.shape[-2:] == (padded.shape[-2] // 4,
                                                                            padded.shape[-1] // 4)
    assert ref_class.std() > 0.1 and ref_masks.std() > 0.1
    compare(class_logits, ref_class, pair=f"maskformer/official {model_name} class logits")
    compare(mask_logits, ref_masks, pair=f"maskformer/official {model_name} mask logits")

    # the official semantic map (pad to 32, mask logits upsampled to the padded size before the sigmoid, crop):
    # the converted model's `official_inference` computes it from the unpadded image
    with torch.no_grad():
        semantic = ours(normalised[None])[0]
    assert expected.shape == semantic.shape == (NCLS, *size) and ours.output_stride == 1
    # sums of 100 query products: float32 rounding of the order of 1e-5 relative
    compare(semantic, expected, pair=f"maskformer/official {model_name} semantic map (official_inference)",
            tol=2e-5 * expected.abs().max().item())

    # seglab's default path (stride-4 scores of the unpadded image, resized outside the model): measured, not asserted
    plain = create_model(model_name, num_classes=NCLS, **{**result.overrides, "official_inference": False}).eval()
    plain.load_state_dict(result.state_dict, strict=True)
    with torch.no_grad():
        default = F.interpolate(plain(normalised[None]), size=size, mode="bilinear", align_corners=False)[0]
    print(f"{model_name}: default inference (stride-4 scores of the unpadded image) differs from the official map by "
          f"{(default - expected).abs().max().item():.3g} (range {(expected.max() - expected.min()).item():.3g})")


def test_maskformer_r50_matches_the_official_code():
    _compare("maskformer_r50", "R50", (75, 93))


@pytest.mark.slow
def test_maskformer_swin_t_matches_the_official_code():
    _compare("maskformer_swin_t", "swin_tiny", (75, 93))
