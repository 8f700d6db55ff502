"""BPR: boundary pixels, patch proposals and NMS, crops, the mask-fused HRNet stem, pasting with overlap averaging,
the training patch set and step, on hand-made cases with known answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from seglab.instance import (
    BPRNet,
    PatchDataset,
    boundary_pixels,
    boundary_scores,
    extract_training_patches,
    paste_patches,
    propose_patches,
    refine,
    train_step,
)
from seglab.instance.bpr import _move_back, _nms_points, crop_mask_patches, crop_patches, mask_iou, resize_patches


class FixedLogits(nn.Module):
    """Stub network: logits (bg, fg) = (0, `fg`) everywhere, at stride 4 like BPRNet."""

    def __init__(self, fg: float, input_size: int = 16) -> None:
        super().__init__()
        self.fg = fg
        self.input_size = input_size
        self.calls = 0

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        b, _, h, w = image.shape
        out = torch.zeros(b, 2, h // 4, w // 4)
        out[:, 1] = self.fg
        return out


def test_boundary_of_square_is_two_pixel_ring():
    masks = torch.zeros(1, 10, 10, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[1:7, 1:7] = True  # one pixel outside the square ...
    expected[3:5, 3:5] = False  # ... and one pixel inside (both sides of the contour)
    assert torch.equal(boundary_pixels(masks)[0], expected)
    scores = boundary_scores(masks)[0]
    assert torch.equal(scores > 0, expected)
    # inner corner: 4 of 9 foreground -> 4/4.5; outer corner: 1 -> 1/4.5; inner edge: 6 -> 3/4.5; outer edge 3
    assert scores[2, 2] == 4 / 4.5 and scores[1, 1] == 1 / 4.5
    assert scores[2, 3] == 3 / 4.5 and scores[1, 3] == 3 / 4.5
    # a foreground pixel on the image border is a boundary pixel (zero padding = background)
    full = torch.ones(1, 4, 4, dtype=torch.bool)
    ring = torch.ones(4, 4, dtype=torch.bool)
    ring[1:3, 1:3] = False
    assert torch.equal(boundary_pixels(full)[0], ring)


def test_nms_on_a_straight_line_keeps_every_fifth_box():
    # 100 points on a row, equal scores, P = 16: IoU at offset d is (16 - d) / (16 + d), > 0.55 for d <= 4,
    # so greedy NMS in raster order keeps x = 0, 5, ..., 95
    xs = torch.arange(100)
    ys = torch.full_like(xs, 50)
    keep = _nms_points(ys, xs, torch.ones(100), torch.zeros_like(xs), 16, 0.55)
    assert torch.equal(torch.sort(xs[keep]).values, torch.arange(0, 100, 5))
    # at 0.25, d must reach 10 ((16 - 10) / 26 = 0.23): x = 0, 10, ..., 90
    keep = _nms_points(ys, xs, torch.ones(100), torch.zeros_like(xs), 16, 0.25)
    assert torch.equal(torch.sort(xs[keep]).values, torch.arange(0, 100, 10))
    # a higher score goes first: a point at x = 2 with a higher score displaces x = 0
    scores = torch.ones(100)
    scores[2] = 2.0
    keep = _nms_points(ys, xs, scores, torch.zeros_like(xs), 16, 0.55)
    assert sorted(xs[keep].tolist())[:3] == [2, 7, 12]


@pytest.mark.parametrize(("patch_size", "nms_iou"), [(16, 0.55), (16, 0.25), (64, 0.55), (10, 0.7)])
def test_local_nms_equals_torchvision_batched_nms(patch_size, nms_iou):
    # random points in clusters (dense, like contours), three groups with overlapping positions, few distinct scores
    g = torch.Generator().manual_seed(patch_size + int(nms_iou * 100))
    centres = torch.randint(0, 300, (12, 2), generator=g)
    pts = centres.repeat_interleave(150, dim=0) + torch.randint(-40, 41, (1800, 2), generator=g)
    pts = pts.clamp(min=0)
    ys, xs = pts[:, 0], pts[:, 1]
    scores = torch.randint(1, 5, (1800,), generator=g).float() / 4.5
    groups = torch.randint(0, 3, (1800,), generator=g)
    keep = _nms_points(ys, xs, scores, groups, patch_size, nms_iou)
    # torchvision with the same fixed order: the rank (score descending, then index) as score
    order = torch.sort(scores, descending=True, stable=True).indices
    rank_score = torch.empty(1800)
    rank_score[order] = torch.arange(1800, 0, -1, dtype=torch.float32)
    boxes = torch.stack([xs, ys, xs + patch_size, ys + patch_size], dim=1).float()
    expected = batched_nms(boxes, rank_score, groups, nms_iou)
    assert 50 < keep.numel() < 1800
    assert torch.equal(keep, expected)


def test_move_back_follows_official_rule():
    boxes = torch.tensor([[-8, -8, 8, 8], [90, 40, 106, 56], [10, 55, 26, 71]])
    moved = _move_back(boxes, height=64, width=100, patch_size=16)
    assert moved.tolist() == [[0, 0, 16, 16], [83, 40, 99, 56], [10, 47, 26, 63]]


def _greedy_reference(points: list[tuple[int, int]], scores: list[float], p: int, thr: float) -> list[tuple[int, int]]:
    """Plain-Python greedy NMS, score descending then raster order, for tiny inputs."""
    order = sorted(range(len(points)), key=lambda i: (-scores[i], points[i]))
    kept: list[int] = []
    for i in order:
        yi, xi = points[i]
        ok = True
        for j in kept:
            yj, xj = points[j]
            inter = max(0, p - abs(xi - xj)) * max(0, p - abs(yi - yj))
            if inter / (2 * p * p - inter) > thr:
                ok = False
                break
        if ok:
            kept.append(i)
    return [points[i] for i in kept]


def test_proposals_on_straight_edge_inside_image():
    h, w, p = 40, 120, 16
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[0, 20:] = True  # a horizontal edge; touches the left, right and bottom borders
    masks[1, 10:30, 30:90] = True
    boxes, inst = propose_patches(masks, patch_size=p, nms_iou=0.55)
    assert boxes.dtype == torch.long and boxes.shape[1] == 4
    assert (boxes[:, 2] - boxes[:, 0] == p).all() and (boxes[:, 3] - boxes[:, 1] == p).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w - 1).all() and (boxes[:, 3] <= h - 1).all()
    for i in range(2):
        scores = boundary_scores(masks[i : i + 1])[0]
        ys, xs = torch.nonzero(scores > 0, as_tuple=True)
        ref = _greedy_reference(list(zip(ys.tolist(), xs.tolist(), strict=True)), scores[ys, xs].tolist(), p, 0.55)
        centres = [(y, x) for y, x in ref]
        expected = _move_back(torch.tensor([[x - 8, y - 8, x + 8, y + 8] for y, x in centres]), h, w, p)
        assert boxes[inst == i].tolist() == expected.tolist()
    # regression value for the straight-edge mask, equal to the plain-Python reference above
    assert int((inst == 0).sum()) == 53
    # images not larger than the patch are skipped
    b, _ = propose_patches(torch.ones(1, 16, 40, dtype=torch.bool), patch_size=16)
    assert b.shape == (0, 4)


def test_crops_are_exact_and_resized_official_way():
    image = torch.arange(3 * 6 * 8, dtype=torch.float32).reshape(3, 6, 8)
    boxes = torch.tensor([[1, 2, 5, 6], [4, 0, 8, 4]])
    patches = crop_patches(image, boxes, 4)
    assert torch.equal(patches[0], image[:, 2:6, 1:5]) and torch.equal(patches[1], image[:, 0:4, 4:8])
    masks = torch.zeros(2, 6, 8, dtype=torch.uint8)
    masks[1, 1, 5] = 1
    mp = crop_mask_patches(masks, boxes, torch.tensor([0, 1]), 4)
    assert mp[0].sum() == 0 and mp[1, 1, 1] == 1 and mp[1].sum() == 1
    img, m = resize_patches(patches, mp, 8)
    assert img.shape == (2, 3, 8, 8) and m.shape == (2, 1, 8, 8)
    assert set(m.unique().tolist()) == {-1.0, 1.0} and int((m[1] > 0).sum()) == 4  # nearest: one pixel -> 2x2


def test_paste_all_foreground_patch_and_outside_unchanged():
    h, w, p = 48, 64, 16
    masks = torch.zeros(1, h, w, dtype=torch.bool)
    masks[0, 10:30, 10:40] = True
    masks[0, 45, 60] = True  # a lone pixel whose patch will be pasted too
    boxes, inst = propose_patches(masks, patch_size=p)
    covered = torch.zeros(h, w, dtype=torch.bool)
    for x1, y1, x2, y2 in boxes.tolist():
        covered[y1:y2, x1:x2] = True
    image = torch.randn(3, h, w)
    out = refine(image, masks, FixedLogits(fg=5.0), patch_size=p)  # the net says all-foreground
    assert out.dtype == torch.bool
    assert out[0][covered].all()
    assert torch.equal(out[0][~covered], masks[0][~covered])
    assert not covered.all()  # the test has pixels outside the patches
    out = refine(image, masks, FixedLogits(fg=-5.0), patch_size=p)  # all background
    assert not out[0][covered].any()
    assert torch.equal(out[0][~covered], masks[0][~covered])


def test_overlap_averaging_by_hand():
    masks = torch.zeros(1, 8, 10, dtype=torch.bool)
    masks[0, 0, 0] = True  # outside both patches: kept
    boxes = torch.tensor([[2, 2, 6, 6], [4, 2, 8, 6]])  # overlap in columns 4-5
    probs = torch.stack([torch.full((4, 4), 0.8), torch.full((4, 4), 0.1)])
    out = paste_patches(masks, probs, boxes, torch.tensor([0, 0]))
    # columns 2-3: 0.8 -> fg; 4-5: (0.8 + 0.1) / 2 = 0.45 -> bg; 6-7: 0.1 -> bg
    assert out[0, 2:6, 2:4].all() and not out[0, 2:6, 4:8].any()
    assert out[0, 0, 0] and out.sum() == 1 + 8
    # 0.8 and 0.3 average to 0.55 > 0.5; exactly 0.5 is background (strict)
    probs = torch.stack([torch.full((4, 4), 0.8), torch.full((4, 4), 0.3)])
    assert paste_patches(masks, probs, boxes, torch.tensor([0, 0]))[0, 2:6, 2:6].all()
    probs = torch.stack([torch.full((4, 4), 0.75), torch.full((4, 4), 0.25)])
    assert not paste_patches(masks, probs, boxes, torch.tensor([0, 0]))[0, 2:6, 4:6].any()
    # patches of another instance do not mix in
    masks2 = torch.zeros(2, 8, 10, dtype=torch.bool)
    out = paste_patches(masks2, torch.stack([torch.full((4, 4), 0.8), torch.full((4, 4), 0.1)]), boxes,
                        torch.tensor([0, 1]))
    assert out[0, 2:6, 2:6].all() and not out[1].any()


def test_bprnet_shapes_and_mask_added_after_first_conv():
    torch.manual_seed(0)
    net = BPRNet("w18s", input_size=32).eval()
    image, mask = torch.randn(2, 3, 32, 32), torch.randn(2, 1, 32, 32).sign()
    with torch.no_grad():
        logits = net(image, mask)
        assert logits.shape == (2, 2, 8, 8)
        # the mask conv is summed with conv1's output before the stem BN
        first = net.backbone.stem.conv1
        expected = first.act(first.norm(first.conv(image) + net.conv_mask(mask)))
        assert torch.allclose(net.stem(image, mask), net.backbone.stem.conv2(expected))
        assert net.conv_mask.stride == (2, 2) and net.conv_mask.weight.shape == (64, 1, 3, 3)
        assert net.conv_mask.bias is None
        net.conv_mask.weight.zero_()
        assert torch.equal(net.stem(image, mask), net.backbone.stem(image))
        assert torch.allclose(net(image, mask), net.decode_head(net.backbone(image)), atol=1e-6)


def test_training_patches_dataset_and_step():
    torch.manual_seed(0)
    h, w, p = 40, 48, 16
    gt = torch.zeros(2, h, w, dtype=torch.bool)
    gt[0, 8:30, 6:26] = True
    gt[1, 10:30, 30:44] = True
    coarse = torch.zeros(3, h, w, dtype=torch.bool)
    coarse[0, 9:29, 7:27] = True  # IoU with gt 0: 20 x 19 / (400 + 440 - 380) = 380 / 460
    coarse[1, 10:30, 30:44] = True  # same shape as gt 1 but labelled another class -> dropped
    coarse[2, 0:4, 0:4] = True  # no overlap -> dropped
    image = torch.randn(3, h, w)
    iou = mask_iou(coarse, gt)
    assert abs(float(iou[0, 0]) - 380 / 460) < 1e-6 and float(iou[1, 1]) == 1.0
    patches = extract_training_patches(image, coarse, torch.tensor([1, 2, 1]), gt, torch.tensor([1, 1]),
                                       patch_size=p)
    boxes, _ = propose_patches(coarse[:1], p, 0.25)
    k = boxes.shape[0]
    assert k > 0 and patches.images.shape == (k, 3, p, p) and patches.coarse.shape == (k, p, p)
    assert patches.target.shape == (k, p, p)
    x1, y1 = boxes[0, :2].tolist()
    assert torch.equal(patches.images[0], image[:, y1:y1 + p, x1:x1 + p])
    assert torch.equal(patches.target[0], gt[0, y1:y1 + p, x1:x1 + p].to(torch.uint8))
    assert torch.equal(patches.coarse[0], coarse[0, y1:y1 + p, x1:x1 + p].to(torch.uint8))
    ds = PatchDataset(patches, input_size=32, flip=True, generator=torch.Generator().manual_seed(0))
    img, mask, target = ds[0]
    assert img.shape == (3, 32, 32) and mask.shape == (1, 32, 32) and target.shape == (32, 32)
    assert target.dtype == torch.long and set(mask.unique().tolist()) <= {-1.0, 1.0}
    batch = [torch.stack(t) for t in zip(*[ds[i] for i in range(min(k, 2))], strict=True)]
    net = BPRNet("w18s", input_size=32)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss = train_step(net, opt, batch)
    assert 0.0 < loss < 5.0
    # loss is 2-class CE: a net with logits (0, 0) gives log 2 on any target
    logits = torch.zeros(1, 2, 8, 8)
    assert abs(float(F.cross_entropy(logits, torch.zeros(1, 8, 8, dtype=torch.long))) - 0.6931) < 1e-3


def test_refine_long_boundary_vectorised_with_timings():
    # a 256 x 512 mask with a long wavy boundary and several instances; the stub net keeps it fast
    h, w = 256, 512
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    wave = (torch.sin(xx / 7.0) * 20 + 128).long()
    masks = torch.stack([yy > wave, (xx - 100) ** 2 + (yy - 60) ** 2 < 40**2, (xx > 300) & (yy > 200)])
    timings: dict[str, float] = {}
    model = FixedLogits(fg=5.0, input_size=128)
    out = refine(torch.randn(3, h, w), masks, model, batch=32, timings=timings)
    assert out.shape == masks.shape
    assert set(timings) == {"extract", "network", "paste"} and all(v >= 0 for v in timings.values())
    boxes, _ = propose_patches(masks)
    assert model.calls == -(-boxes.shape[0] // 32)
    # with an all-foreground net, refinement only adds foreground
    assert (out | masks).eq(out).all()
