"""FCN-HRNetV2 against the tree written from the official HRNet/HRNet-Semantic-Segmentation code
(`official.hrnet_semantic_segmentation`): random weights, the released checkpoint layout (`FullModel`: `model.*` and
`loss.criterion.weight`) converted with `--source official`, strict load, logits and stage-4 branches compared.

Both code versions the converter covers: the HRNet-OCR branch (bilinear with `align_corners=config.MODEL.ALIGN_CORNERS`,
True in its ADE20K / COCO-Stuff experiments) and the pytorch-v1.1 / master code and the other HRNet-OCR experiments
(bilinear without `align_corners`, i.e. False: the converter's default), converted with
`convert_hrnet_official(..., align_corners=...)`.
"""

from __future__ import annotations

import pytest
import torch
from official.hrnet_semantic_segmentation.config import EXTRA
from official.hrnet_semantic_segmentation.seg_hrnet import HighResolutionNet
from official.hrnet_semantic_segmentation.utils import CrossEntropy, FullModel
from testkit import compare, randomize_

from seglab import create_model
from seglab.convert import convert_checkpoint
from seglab.convert.hrnet import convert_hrnet_official

pytestmark = pytest.mark.reference

INPUT = (1, 3, 75, 93)  # odd sides: the branches are 19x24, 10x12, 5x6, 3x3, not exact halves
NUM_CLASSES = 7


def released_checkpoint(reference: HighResolutionNet) -> dict:
    """The state dict `tools/train.py` saves: the DataParallel-unwrapped FullModel, with the loss's class weights."""
    full = FullModel(reference, CrossEntropy(ignore_label=255, weight=torch.rand(NUM_CLASSES) + 0.5))
    return full.state_dict()


def check(config: str, model_name: str, align_corners: bool, seed: int) -> None:
    reference = randomize_(HighResolutionNet(EXTRA[config], NUM_CLASSES, align_corners=align_corners), seed).eval()
    checkpoint = released_checkpoint(reference)
    if not align_corners:  # the converter's default: every released checkpoint but two HRNet-OCR ones
        result = convert_checkpoint(checkpoint, "official", model_name)
    else:
        result = convert_hrnet_official(checkpoint, model_name, align_corners=True)
    assert result.num_classes == NUM_CLASSES and result.dropped == ["loss.criterion.weight"]
    assert result.overrides["align_corners"] is align_corners
    ours = create_model(model_name, num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)

    pair = f"hrnet/official {config} align_corners={align_corners}"
    x = torch.randn(INPUT, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        for level, (a, b) in enumerate(zip(ours.backbone(x), reference.forward_branches(x), strict=True)):
            compare(a, b, pair=f"{pair} branch {level}", tol=1e-4)
        logits, expected = ours(x), reference(x)
    assert logits.shape == (1, NUM_CLASSES, 19, 24)
    compare(logits, expected, pair=pair, tol=1e-4)


@pytest.mark.parametrize(("config", "model_name", "align_corners"), [
    ("w18_small_v2", "fcn_hrnetv2_w18s", True),  # HRNet-OCR branch
    ("w18_small_v2", "fcn_hrnetv2_w18s", False),  # pytorch-v1.1 code, where the small models were released
    ("w18_small_v1", "fcn_hrnetv2_w18s_v1", False),
])
def test_hrnet_matches_official(config: str, model_name: str, align_corners: bool) -> None:
    check(config, model_name, align_corners, seed=20)


@pytest.mark.slow
@pytest.mark.parametrize("align_corners", [True, False])
def test_hrnet_w48_matches_official(align_corners: bool) -> None:
    """W48 (65.9M parameters): ADE20K / COCO-Stuff configs (True) and Cityscapes / LIP / PASCAL-Context (False)."""
    check("w48", "fcn_hrnetv2_w48", align_corners, seed=30)


@torch.no_grad()
def test_align_corners_must_match_the_code_version() -> None:
    """The two code versions hold the same keys but compute different outputs: converting with the other
    `align_corners` changes the logits far beyond the tolerance (the file cannot tell; the caller must)."""
    reference = randomize_(HighResolutionNet(EXTRA["w18_small_v2"], NUM_CLASSES, align_corners=True), 21).eval()
    result = convert_checkpoint(released_checkpoint(reference), "official", "fcn_hrnetv2_w18s")  # default: False
    ours = create_model("fcn_hrnetv2_w18s", num_classes=result.num_classes, **result.overrides).eval()
    ours.load_state_dict(result.state_dict, strict=True)
    x = torch.randn(INPUT, generator=torch.Generator().manual_seed(22))
    assert (ours(x) - reference(x)).abs().max() > 1e-2


@torch.no_grad()
def test_cli_set_records_align_corners_for_the_ocr_ade20k_files(tmp_path) -> None:
    """`seglab convert --set align_corners=true` (the HRNet-OCR ADE20K / COCO-Stuff files) writes a checkpoint that
    reproduces the official network; an unknown option is refused by name."""
    from seglab.cli.main import main

    reference = randomize_(HighResolutionNet(EXTRA["w18_small_v2"], NUM_CLASSES, align_corners=True), 23).eval()
    src, dst = tmp_path / "hrnet_ade20k.pth", tmp_path / "w18s.safetensors"
    torch.save(released_checkpoint(reference), src)
    assert main(["convert", "--source", "official", "--model", "fcn_hrnetv2_w18s", "--set", "align_corners=true",
                 str(src), str(dst)]) == 0
    ours = create_model("fcn_hrnetv2_w18s", checkpoint=dst).eval()
    assert ours.model_overrides["align_corners"] is True
    x = torch.randn(INPUT, generator=torch.Generator().manual_seed(24))
    compare(ours(x), reference(x), pair="hrnet/official w18_small_v2 (seglab convert --set align_corners=true)")
    with pytest.raises(SystemExit, match="align_corner"):
        main(["convert", "--source", "official", "--model", "fcn_hrnetv2_w18s", "--set", "align_corner=true",
              str(src), str(dst)])
