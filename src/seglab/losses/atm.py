"""SegViT's set loss for the ATM heads (zbwxp/SegVit `losses/atm_loss.py` + `losses/criterion.py`).

Paper: "SegViT: Semantic Segmentation with Plain Vision Transformers", Zhang et al., NeurIPS 2022, arXiv:2210.05844.
Written for seglab from the facts of the original code:

- No Hungarian matching: query `c` predicts class `c`. In each image the classes present in the labels (the ignore
  index left out) are the matched queries; every other query's class target is "no object" (index K).
- Class loss: cross-entropy over the K + 1 logits of every query of the batch, weight 1 per class and 0.1 for
  "no object", torch's weighted mean (sum of weighted losses / sum of the targets' weights).
- Mask losses on the matched queries: the mask logits are upsampled bilinearly to the label size and compared with
  the binary map `label == c` (ignored pixels are 0 in every target, not excluded): sigmoid focal loss (alpha 0.25,
  gamma 2) averaged over pixels, and dice `1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`, each summed over the
  masks and divided by `num_masks`, the number of matched queries in the batch (averaged over ranks when
  torch.distributed is initialised, at least 1).
- Weights: class 1, focal 20, dice 1; the same three losses with the same weights for every auxiliary output
  (suffixes `_0`, `_1`, ... in output order), all with the same assignment.

What we changed: the masks are upsampled to the padded input and cropped (`seglab.heads.atm.upsample_masks`), which
is the original's resize for inputs that are multiples of the patch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from seglab.heads.atm import upsample_masks


def fixed_assignment(
    labels: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SegViT's query-to-class assignment: query `c` is matched to class `c` when the class is in the image.

    Args:
        labels: (B, H, W) class indices, `ignore_index` for unlabeled pixels.
        num_classes: classes (K), one query each.
        ignore_index: label value that is no class.

    Returns:
        (B, K) class targets (`c` for a present class, K "no object" otherwise), and the batch and query indices of
        the matched queries, (M,) each, image-major.
    """
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values = labels[bad].unique()[:10].tolist()
        raise ValueError(f"labels hold values {values} outside 0..{num_classes - 1} that are not the ignore index "
                         f"{ignore_index}; check the dataset's classes and num_classes")
    flat = torch.where(valid, labels, num_classes).reshape(labels.shape[0], -1)  # ignored pixels -> the spare slot K
    present = torch.zeros(labels.shape[0], num_classes + 1, dtype=torch.bool, device=labels.device)
    present = present.scatter_(1, flat, True)[:, :num_classes]  # (B, K)
    classes = torch.arange(num_classes, device=labels.device).expand_as(present)
    targets = torch.where(present, classes, torch.full_like(classes, num_classes))
    batch_index, query_index = present.nonzero(as_tuple=True)
    return targets, batch_index, query_index


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, num_masks: float, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """RetinaNet's sigmoid focal loss of (M, P) mask logits against binary targets: mean over the P pixels, summed over
    the M masks, divided by `num_masks`.

    Args:
        logits: (M, P) mask logits.
        targets: (M, P) 0/1 floats.
        num_masks: the normaliser.
        alpha: weight of the positives (1 - alpha for negatives); negative: no weighting.
        gamma: focusing exponent on `1 - p_t`.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(dim=1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """`1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)` per mask with `p = sigmoid(logits)`, summed over the M masks and
    divided by `num_masks`.

    Args:
        logits: (M, P) mask logits.
        targets: (M, P) 0/1 floats.
        num_masks: the normaliser.
    """
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(dim=-1) + 1
    denominator = prob.sum(dim=-1) + targets.sum(dim=-1) + 1
    return (1 - numerator / denominator).sum() / num_masks


def global_num_masks(count: int, device: torch.device) -> float:
    """The batch's matched-mask count averaged over the ranks (when torch.distributed is initialised), at least 1."""
    total = torch.tensor([float(count)], device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        world = dist.get_world_size()
    return max(total.item() / world, 1.0)


@dataclass(frozen=True)
class ATMLoss:
    """SegViT's loss over every decoder output of an ATM head (the last is the prediction, the others auxiliary).

    Args:
        num_classes: classes (K); the heads have one query per class.
        cls_weight: weight of the class cross-entropy.
        mask_weight: weight of the sigmoid focal loss (20 in SegViT).
        dice_weight: weight of the dice loss.
        no_object_weight: cross-entropy weight of the "no object" class (`eos_coef`).
        loss_weight: overall factor.
        focal_alpha: focal loss alpha.
        focal_gamma: focal loss gamma.
        patch_size: the backbone's padding multiple, for `upsample_masks`.
    """

    num_classes: int
    cls_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    no_object_weight: float = 0.1
    loss_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    patch_size: int = 16

    def __call__(
        self, class_logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted sum of every output's losses, and each weighted part by name.

        Args:
            class_logits: (L, B, K, K + 1) class logits of the L decoder outputs, the prediction last.
            masks: (L, B, K, h, w) their mask logits, over the padded input.
            labels: (B, H, W) class indices of the (unpadded) input, `ignore_index` for unlabeled pixels.
            ignore_index: label value excluded from the classes.

        Returns:
            (loss, parts): parts `loss_ce`, `loss_mask`, `loss_dice` for the prediction, then `loss_ce_{i}`, ... for
            auxiliary output i, each already weighted; `loss` is their sum.
        """
        num_outputs, batch = class_logits.shape[:2]
        expected = (num_outputs, batch, self.num_classes, self.num_classes + 1)
        if tuple(class_logits.shape) != expected:
            raise ValueError(f"class_logits must have shape (outputs, B, K, K + 1) = {expected}, got "
                             f"{tuple(class_logits.shape)}")
        if tuple(masks.shape[:3]) != expected[:3] or masks.ndim != 5:
            raise ValueError(f"masks must have shape (outputs, B, K, h, w) with (outputs, B, K) = {expected[:3]}, got "
                             f"{tuple(masks.shape)}")
        if labels.ndim != 3 or labels.shape[0] != batch:
            raise ValueError(f"labels must have shape (B, H, W) with B={batch}, got {tuple(labels.shape)}")
        labels = labels.long()
        targets, batch_index, query_index = fixed_assignment(labels, self.num_classes, ignore_index)
        num_masks = global_num_masks(len(batch_index), class_logits.device)
        class_weight = torch.ones(self.num_classes + 1, device=class_logits.device)
        class_weight[-1] = self.no_object_weight
        # (M, H*W) binary targets of the matched queries; ignored pixels are 0
        target_masks = (labels[batch_index] == query_index[:, None, None]).flatten(1).float()
        terms: dict[str, torch.Tensor] = {}
        order = [num_outputs - 1, *range(num_outputs - 1)]  # the prediction's parts first, as the original logs them
        for output in order:
            suffix = "" if output == num_outputs - 1 else f"_{output}"
            logits = class_logits[output].float()
            terms[f"loss_ce{suffix}"] = self.cls_weight * F.cross_entropy(
                logits.reshape(-1, self.num_classes + 1), targets.reshape(-1), weight=class_weight)
            matched = upsample_masks(masks[output][batch_index, query_index].float(), labels.shape[-2:],
                                     self.patch_size).flatten(1)  # (M, H*W)
            terms[f"loss_mask{suffix}"] = self.mask_weight * sigmoid_focal_loss(
                matched, target_masks, num_masks, self.focal_alpha, self.focal_gamma)
            terms[f"loss_dice{suffix}"] = self.dice_weight * dice_loss(matched, target_masks, num_masks)
        values = torch.stack(list(terms.values())) * self.loss_weight
        parts = dict(zip(terms, values.detach().tolist(), strict=True))
        return values.sum(), parts
