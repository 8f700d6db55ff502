"""ConfusionMatrix metrics against hand-computed values, mmseg's NaN rules, streaming and merging."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seglab.metrics import ConfusionMatrix, format_table

# target / prediction pairs (ignore pixel at position 6):
# class 0: TP 2, in target 3, predicted 2 -> IoU 2/3, Acc 2/3, Dice 4/5, P 1, R 2/3, F 4/5
# class 1: TP 1, in target 2, predicted 3 -> IoU 1/4, Acc 1/2, Dice 2/5, P 1/3, R 1/2, F 2/5
# class 2: TP 1, in target 2, predicted 2 -> IoU 1/3, Acc 1/2, Dice 1/2, P 1/2, R 1/2, F 1/2
TARGET = torch.tensor([0, 0, 0, 1, 1, 2, 255, 2])
PRED = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])


def _close(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-12), (a, b)


def test_hand_computed_case():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 1, 1]]
    r = cm.compute()
    _close(r["IoU"], [2 / 3, 1 / 4, 1 / 3])
    _close(r["Acc"], [2 / 3, 1 / 2, 1 / 2])
    _close(r["Dice"], [4 / 5, 2 / 5, 1 / 2])
    _close(r["Precision"], [1.0, 1 / 3, 1 / 2])
    _close(r["Recall"], [2 / 3, 1 / 2, 1 / 2])
    _close(r["Fscore"], [4 / 5, 2 / 5, 1 / 2])
    assert r["aAcc"] == pytest.approx(4 / 7)
    assert r["mIoU"] == pytest.approx((2 / 3 + 1 / 4 + 1 / 3) / 3)
    assert r["mAcc"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    assert r["mDice"] == pytest.approx((4 / 5 + 2 / 5 + 1 / 2) / 3)
    assert r["num_pixels"] == 7


def test_two_dimensional_maps_and_ignore_index():
    target = torch.tensor([[[1, 1], [0, 9]]])
    pred = torch.tensor([[[1, 0], [0, 4]]])  # the prediction under an ignored pixel does not matter
    cm = ConfusionMatrix(2, ignore_index=9)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 0], [1, 1]]
    assert cm.compute()["aAcc"] == pytest.approx(2 / 3)


def test_nan_classes_follow_mmseg():
    # class 2 is only predicted, class 3 appears nowhere, class 1 is in the target but never predicted
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 0, 0])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    r = cm.compute()
    _close(r["IoU"], [1 / 4, 0.0, 0.0, math.nan])  # absent from both: NaN; only predicted: 0
    _close(r["Acc"], [1 / 2, 0.0, math.nan, math.nan])  # no ground truth: NaN
    _close(r["Dice"], [2 / 5, 0.0, 0.0, math.nan])
    _close(r["Precision"], [1 / 3, math.nan, 0.0, math.nan])
    _close(r["Fscore"], [2 / 5, math.nan, math.nan, math.nan])  # mmseg: 0/0 without a true positive
    assert r["mIoU"] == pytest.approx((1 / 4 + 0 + 0) / 3)
    assert r["mAcc"] == pytest.approx((1 / 2 + 0) / 2)
    assert r["mFscore"] == pytest.approx(2 / 5)


def test_empty_matrix_gives_nan():
    r = ConfusionMatrix(3).compute()
    assert math.isnan(r["aAcc"]) and math.isnan(r["mIoU"]) and r["num_pixels"] == 0


def test_many_updates_equal_one_update():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (6, 7, 9), generator=g)
    target[target == 4] = 255
    pred = torch.randint(0, 4, (6, 7, 9), generator=g)
    whole = ConfusionMatrix(4)
    whole.update(pred, target)
    parts = ConfusionMatrix(4)
    for i in range(6):
        parts.update(pred[i], target[i])
    assert torch.equal(whole.matrix, parts.matrix)
    assert whole.compute() == parts.compute()
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(pred[:2], target[:2])
    b.update(pred[2:], target[2:])
    assert torch.equal(a.merge(b).matrix, whole.matrix)
    with pytest.raises(ValueError, match="cannot merge a 5-class matrix"):
        a.merge(ConfusionMatrix(5))


def test_bad_inputs_have_clear_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"prediction shape \(2, 4\) differs from target shape \(2, 5\)"):
        cm.update(torch.zeros(2, 4, dtype=torch.int64), torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"target has value\(s\) \[3, 7\] outside 0\.\.2"):
        cm.update(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 3, 7, 255]))
    with pytest.raises(ValueError, match=r"prediction has value\(s\) \[-1\] outside 0\.\.2"):
        cm.update(torch.tensor([0, -1]), torch.tensor([0, 1]))
    assert cm.matrix.sum() == 0


def test_all_reduce_without_process_group_is_a_no_op():
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    before = cm.matrix.clone()
    assert torch.equal(cm.all_reduce().matrix, before)


def _reduce_worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cm = ConfusionMatrix(3)
        cm.update(PRED[rank::2], TARGET[rank::2])
        queue.put((rank, cm.all_reduce().matrix.tolist()))
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_reduce_worker, args=(2, port, queue), nprocs=2, start_method="spawn")
    results = dict(queue.get() for _ in range(2))
    expected = [[2, 1, 0], [0, 1, 1], [0, 1, 1]]
    assert results[0] == expected and results[1] == expected


def test_format_table():
    cm = ConfusionMatrix(4)
    cm.update(torch.cat([PRED, torch.tensor([2])]), torch.cat([TARGET, torch.tensor([2])]))
    text = format_table(cm.compute(), ["road", "sky", "car", "tree"])
    lines = text.splitlines()
    assert lines[0].split() == ["Class", "IoU", "Acc"]
    assert lines[2].split() == ["road", "66.67", "66.67"]
    assert lines[5].split() == ["tree", "nan", "nan"]
    assert "mIoU: 47.22" in text  # (2/3 + 1/4 + 2/4) / 3 and "aAcc: 62.50" in text
    with pytest.raises(ValueError, match="2 class names for 4 classes"):
        format_table(cm.compute(), ["a", "b"])
