"""BPR against the official chenhang98/BPR code (`official.bpr`, written from the repository: the mmseg 0.7 refinement
network and the `split_patches.py` / `merge_patches.py` tools).

Network: the official `EncoderDecoderRefine` (HRNet-W18-Small + `conv_mask` + FCN head, `configs/bpr/hrnet18s_128.py`)
with random weights (`testkit.randomize_`), saved the way mmcv saves checkpoints (`{"meta", "state_dict",
"optimizer"}`), converted by `seglab.convert.convert_checkpoint(..., "official", "bpr_hrnet18s")`, loaded strictly
into `seglab.instance.bpr.build_bpr`. Compared: the logits resized to the network input (`encode_decode`) and the
float output at the 64 px patch size (`test_float.py`'s foreground probability).

Tools, on a synthetic 150x170 image with three instances (one touching the image border, one concave): the boundary
scores, the NMS-kept and moved-back patch boxes at both thresholds (0.55 inference, 0.25 patch datasets), the crops,
and the reassembly of given patch probabilities; then the whole refinement (`seglab.instance.bpr.refine` against the
official pipeline: split, network on every patch, merge) at NMS 0.25 (the COCO inference threshold: fewer patches). The official NMS op sorts equal scores in an unspecified
order; the reference uses a stable sort (see `official.bpr.nms`), which is also seglab's rule, so the boxes must be
the same. The official image resize runs in cv2 on uint8 patches; the reference resizes the float patch bilinearly
(`align_corners=False`, cv2's sampling without its uint8 rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from official.bpr.encoder_decoder_refine import build
from official.bpr.merge_patches import reassemble
from official.bpr.split_patches import details, find_float_boundary, get_dets, run_inst
from testkit import compare, randomize_

from seglab.convert import convert_checkpoint
from seglab.instance.bpr import (
    IMAGE_MEAN,
    IMAGE_STD,
    boundary_scores,
    build_bpr,
    crop_mask_patches,
    crop_patches,
    normalize_image,
    paste_patches,
    propose_patches,
    refine,
)

pytestmark = pytest.mark.reference

H, W, P = 150, 170, 64


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB image and (3, H, W) uint8 instance masks."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    ellipse = ((yy - 70) / 45.0) ** 2 + ((xx - 60) / 38.0) ** 2 <= 1
    box = (yy >= 90) & (yy < 150) & (xx >= 120) & (xx < 170)  # touches the bottom and right borders
    ring = (np.hypot(yy - 40, xx - 125) < 28) & ~((yy > 35) & (xx < 130) & (xx > 105))  # concave
    masks = np.stack([ellipse, box, ring]).astype(np.uint8)
    image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    image[ellipse] = (image[ellipse] // 2 + 100).astype(np.uint8)
    return image, masks


@pytest.fixture(scope="module")
def networks():
    reference = build("hrnet18s_128").eval()
    randomize_(reference, seed=41)
    checkpoint = {"meta": {"mmseg_version": "0.7.0"}, "state_dict": reference.state_dict(), "optimizer": {}}
    result = convert_checkpoint(checkpoint, "official", "bpr_hrnet18s")
    assert result.num_classes == 2 and result.dropped == [] and not result.backbone_only
    ours = build_bpr("bpr_hrnet18s").eval()
    ours.load_state_dict(result.state_dict, strict=True)
    return reference, ours


def _network_inputs(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official test pipeline on one patch: resize (image bilinear, mask nearest), normalise (RGB)."""
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
    img = (img - torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    m = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(size, size), mode="nearest")[:, 0]
    return img, m


@torch.no_grad()
def test_refinement_network_matches_the_official_code(networks):
    reference, ours = networks
    gen = torch.Generator().manual_seed(1)
    img = torch.randn(3, 3, 128, 128, generator=gen)
    mask = (torch.rand(3, 128, 128, generator=gen) > 0.5).float()
    expected = reference.encode_decode(torch.cat([img, ((mask - 0.5) / 0.5)[:, None]], dim=1))
    logits = F.interpolate(ours(img, ((mask - 0.5) / 0.5)[:, None]), size=(128, 128), mode="bilinear",
                           align_corners=False)
    assert expected.std() > 0.1
    compare(logits, expected, pair="bpr/official logits (network input size)")
    probs = F.interpolate(logits, size=(P, P), mode="bilinear", align_corners=False).softmax(dim=1)[:, 1]
    compare(probs, reference.simple_test(img, mask, (P, P)), pair="bpr/official foreground probability (64 px)")


@pytest.mark.parametrize("nms_iou", [0.55, 0.25])
def test_boundary_patches_match_the_official_tools(nms_iou):
    image, masks = _scene()
    scores = boundary_scores(torch.from_numpy(masks))
    boxes, instance = propose_patches(torch.from_numpy(masks), P, nms_iou)
    img_patches = crop_patches(torch.from_numpy(image).permute(2, 0, 1), boxes, P)
    mask_patches = crop_mask_patches(torch.from_numpy(masks), boxes, instance, P)
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(scores[i].numpy(), find_float_boundary(mask))
        dets, img_ref, dt_ref, _ = run_inst(image, mask, np.zeros_like(mask), P, nms_iou)
        mine = boxes[instance == i]
        np.testing.assert_array_equal(mine.numpy(), dets[:, :4].astype(np.int64), err_msg=f"instance {i} boxes")
        for k, (a, b) in enumerate(zip(img_patches[instance == i], img_ref, strict=True)):
            np.testing.assert_array_equal(a.permute(1, 2, 0).numpy(), b, err_msg=f"instance {i} image patch {k}")
        for k, (a, b) in enumerate(zip(mask_patches[instance == i], dt_ref, strict=True)):
            np.testing.assert_array_equal(a.numpy(), b, err_msg=f"instance {i} mask patch {k}")
    assert len(boxes) > 3 * len(masks)


def test_reassembly_matches_the_official_merge():
    _, masks = _scene()
    boxes, instance = propose_patches(torch.from_numpy(masks), P, 0.55)
    probs = torch.rand(len(boxes), P, P, generator=torch.Generator().manual_seed(2))
    refined = paste_patches(torch.from_numpy(masks).bool(), probs, boxes, instance)
    for i, mask in enumerate(masks):
        hlist, wlist = details(get_dets(mask, P, 0.55))
        expected = reassemble(mask, list(probs[instance == i].numpy()), hlist, wlist)
        np.testing.assert_array_equal(refined[i].numpy().astype(np.uint8), expected, err_msg=f"instance {i}")


@torch.no_grad()
def test_refine_matches_the_official_pipeline(networks):
    reference, ours = networks
    image, masks = _scene()
    refined = refine(normalize_image(torch.from_numpy(image).permute(2, 0, 1)), torch.from_numpy(masks).bool(), ours,
                     patch_size=P, nms_iou=0.25)
    changed = 0
    for i, mask in enumerate(masks):
        dets, img_patches, dt_patches, _ = run_inst(image, mask, np.zeros_like(mask), P, 0.25)
        # the official test runs one patch at a time; batching them changes nothing in eval
        inputs = [_network_inputs(a, b, 128) for a, b in zip(img_patches, dt_patches, strict=True)]
        img, m = torch.cat([a for a, _ in inputs]), torch.cat([b for _, b in inputs])
        outputs = list(reference.simple_test(img, m, (P, P)).numpy())
        hlist, wlist = details(dets)
        expected = reassemble(mask, outputs, hlist, wlist)
        np.testing.assert_array_equal(refined[i].numpy().astype(np.uint8), expected, err_msg=f"instance {i}")
        changed += int((expected != mask).sum())
    assert changed > 100  # the random network changes the masks: the comparison is not of unchanged inputs


def test_cli_converts_an_official_checkpoint_for_refine(networks, tmp_path, capsys):
    """`seglab convert --source official --model bpr_hrnet18s` writes a `load_bpr` checkpoint of the same network."""
    from seglab.cli.main import main
    from seglab.instance.bpr_dataset import load_bpr

    reference, ours = networks
    src, dst = tmp_path / "bpr_official.pth", tmp_path / "bpr.safetensors"
    torch.save({"meta": {"mmseg_version": "0.7.0"}, "state_dict": reference.state_dict(), "optimizer": {}}, src)
    assert main(["convert", "--source", "official", "--model", "bpr_hrnet18s", str(src), str(dst)]) == 0
    assert "seglab refine --bpr" in capsys.readouterr().out
    loaded = load_bpr(dst)
    assert loaded.fuse_upsample == "bilinear_scale" and loaded.input_size == 128
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
