"""MaskFormer's set loss: Hungarian matching of predicted (class, mask) pairs to the classes of a semantic label map.

Facts from facebookresearch/MaskFormer (`mask_former/modeling/matcher.py`, `criterion.py`, the semantic dataset mapper
and `configs/ade20k-150/maskformer_R50_bs16_160k.yaml`), themselves from DETR:
- Targets: one binary mask per class present in the label map, ignored pixels (255) excluded from the classes; an
  ignored pixel is a negative of every mask (the original builds `masks = [label == c for c in classes]`).
- Matching, per image: cost `class_weight * (-softmax prob of the target class) + mask_weight * focal + dice_weight *
  dice`, with the pairwise sigmoid focal cost (alpha 0.25, gamma 2, averaged over pixels) and the dice cost
  `1 - (2 |p t| + 1) / (|p| + |t| + 1)`; the target masks are resized to the predicted masks' size with nearest
  interpolation, as the original does (the cost is computed at stride 4); `scipy.optimize.linear_sum_assignment`.
- Loss, for the final output and (deep supervision) each decoder layer's, each with its own matching: cross entropy over
  all queries (unmatched ones target "no object", weighted 0.1), and on the matched masks, upsampled bilinearly
  (align_corners=False) to the label size, the sigmoid focal loss (mean over pixels) and the dice loss, each summed
  over masks and divided by the number of target masks in the batch (averaged over processes, at least 1). Weights:
  class 1, mask (focal) 20, dice 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def semantic_targets(labels: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (classes, masks) pair per image of a label batch.

    Args:
        labels: (B, H, W) long class indices; `ignore_index` marks unlabelled pixels.
        num_classes: classes of the model; other values than these and `ignore_index` are refused.
        ignore_index: the unlabelled value.

    Returns:
        Per image: the sorted present classes (n,) long and their binary masks (n, H, W) float.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    targets = []
    for label in labels:
        classes = torch.unique(label)
        classes = classes[classes != ignore_index]
        if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"label values must be in 0..{num_classes - 1} or {ignore_index}, found "
                             f"{classes.min().item()}..{classes.max().item()}")
        masks = (label[None] == classes[:, None, None]).float()  # (n, H, W)
        targets.append((classes, masks))
    return targets


def pairwise_focal_cost(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                        gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss of every prediction against every target, averaged over pixels.

    Args:
        logits: (Q, P) mask logits.
        targets: (N, P) binary masks.

    Returns:
        (Q, N) costs.
    """
    prob = logits.sigmoid()
    pos = alpha * (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits),
                                                                          reduction="none")
    neg = (1 - alpha) * prob**gamma * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits),
                                                                        reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss `1 - (2 |p t| + 1) / (|p| + |t| + 1)` of every prediction against every target: (Q, P), (N, P) ->
    (Q, N)."""
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Focal loss of matched (M, P) logits and masks: mean over pixels, summed over masks, divided by `num_masks`."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss of matched (M, P) logits and masks, summed over masks and divided by `num_masks`."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


class HungarianMatcher:
    """One-to-one assignment of queries to target masks minimising class + focal + dice costs.

    Args:
        class_weight: weight of the class cost (minus the target class's probability).
        mask_weight: weight of the sigmoid focal cost.
        dice_weight: weight of the dice cost.
    """

    def __init__(self, class_weight: float = 1.0, mask_weight: float = 20.0, dice_weight: float = 1.0) -> None:
        if class_weight == 0 and mask_weight == 0 and dice_weight == 0:
            raise ValueError("at least one matching cost weight must be non-zero")
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight

    def cost(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, classes: torch.Tensor,
             masks: torch.Tensor) -> torch.Tensor:
        """The (Q, N) cost matrix of one image: class logits (Q, K + 1), mask logits (Q, h, w), target classes (N,)
        and masks (N, H, W) (resized to (h, w), nearest)."""
        masks = F.interpolate(masks[:, None].to(mask_logits.dtype), size=mask_logits.shape[-2:], mode="nearest")
        pred = mask_logits.flatten(1).float()  # (Q, h, w) -> (Q, hw)
        tgt = masks[:, 0].flatten(1).float()  # (N, 1, h, w) -> (N, hw)
        cost_class = -class_logits.float().softmax(-1)[:, classes]
        return (self.class_weight * cost_class + self.mask_weight * pairwise_focal_cost(pred, tgt)
                + self.dice_weight * pairwise_dice_cost(pred, tgt))

    @torch.no_grad()
    def __call__(self, class_logits: torch.Tensor, mask_logits: torch.Tensor,
                 targets: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Matches a batch.

        Args:
            class_logits: (B, Q, K + 1).
            mask_logits: (B, Q, h, w).
            targets: per image, classes (N,) and masks (N, H, W) (see `semantic_targets`).

        Returns:
            Per image, (query indices, target indices), both long and of length min(Q, N), sorted by query.
        """
        from scipy.optimize import linear_sum_assignment

        indices = []
        for b, (classes, masks) in enumerate(targets):
            cost = self.cost(class_logits[b], mask_logits[b], classes, masks)
            # a NaN/inf cost (diverged outputs) is matched last instead of crashing the solver
            cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
        return indices


class MaskFormerLoss:
    """Set loss of MaskFormer on the final and every auxiliary (per decoder layer) output.

    Args:
        num_classes: classes (without "no object").
        class_weight: weight of the cross entropy.
        mask_weight: weight of the focal loss (also its matching-cost weight).
        dice_weight: weight of the dice loss (also its matching-cost weight).
        no_object_weight: cross-entropy weight of the "no object" class.
    """

    def __init__(self, num_classes: int, class_weight: float = 1.0, mask_weight: float = 20.0,
                 dice_weight: float = 1.0, no_object_weight: float = 0.1) -> None:
        self.num_classes = num_classes
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.matcher = HungarianMatcher(class_weight, mask_weight, dice_weight)

    def single(self, class_logits: torch.Tensor, mask_logits: torch.Tensor,
               targets: list[tuple[torch.Tensor, torch.Tensor]], num_masks: float) -> dict[str, torch.Tensor]:
        """Unweighted `ce`, `mask` (focal) and `dice` losses of one output: class logits (B, Q, K + 1), mask logits
        (B, Q, h, w)."""
        indices = self.matcher(class_logits, mask_logits, targets)
        device = class_logits.device
        batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([q for q, _ in indices]).to(device)
        target_classes = torch.full(class_logits.shape[:2], self.num_classes, dtype=torch.long, device=device)
        target_classes[batch_idx, query_idx] = torch.cat([t[0][j.to(t[0].device)].to(device)
                                                          for t, (_, j) in zip(targets, indices, strict=True)])
        weight = torch.ones(self.num_classes + 1, device=device)
        weight[-1] = self.no_object_weight
        ce = F.cross_entropy(class_logits.float().transpose(1, 2), target_classes, weight)  # (B, K + 1, Q) vs (B, Q)
        pred = mask_logits[batch_idx, query_idx]  # (M, h, w)
        tgt = torch.cat([m[j.to(m.device)] for (_, m), (_, j) in zip(targets, indices, strict=True)]).to(device)
        pred = F.interpolate(pred[:, None].float(), size=tgt.shape[-2:], mode="bilinear", align_corners=False)
        pred, tgt = pred.flatten(1), tgt.flatten(1)  # (M, 1, H, W) -> (M, HW)
        return {"ce": ce, "mask": sigmoid_focal_loss(pred, tgt, num_masks), "dice": dice_loss(pred, tgt, num_masks)}

    def __call__(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor,
                 ignore_index: int = 255) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted total and its parts.

        Args:
            class_logits: (L, B, Q, K + 1); the last entry is the final output, the others auxiliary.
            mask_logits: (L, B, Q, h, w).
            labels: (B, H, W) long label map.
            ignore_index: the unlabelled value.

        Returns:
            The loss tensor and floats: `loss_ce`, `loss_mask`, `loss_dice` (final output, weighted) and `loss_aux`
            (the weighted sum over the auxiliary outputs).
        """
        if class_logits.ndim != 4 or mask_logits.ndim != 5:
            raise ValueError(f"expected class logits (L, B, Q, K + 1) and mask logits (L, B, Q, h, w), got shapes "
                             f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}")
        if class_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"class logits have {class_logits.shape[-1]} entries, expected num_classes + 1 = "
                             f"{self.num_classes + 1}")
        targets = semantic_targets(labels, self.num_classes, ignore_index)
        num_masks = torch.tensor(float(sum(len(c) for c, _ in targets)), device=class_logits.device)
        world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_masks)
            world = torch.distributed.get_world_size()
        num_masks = max(num_masks.item() / world, 1.0)
        weights = {"ce": self.class_weight, "mask": self.mask_weight, "dice": self.dice_weight}
        total = class_logits.new_zeros(())
        parts: dict[str, float] = {}
        aux = 0.0
        last = class_logits.shape[0] - 1
        for i in range(class_logits.shape[0]):
            losses = self.single(class_logits[i], mask_logits[i], targets, num_masks)
            layer_total = sum(weights[k] * v for k, v in losses.items())
            total = total + layer_total
            if i == last:
                parts.update({f"loss_{k}": weights[k] * v.item() for k, v in losses.items()})
            else:
                aux += float(layer_total.item())
        parts["loss_aux"] = aux
        return total, parts
