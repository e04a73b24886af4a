"""Metrics: SCHP-exact confusion-matrix scores, the per-image variant, PCKh@0.5, DensePose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spd.labels import COARSE_GROUPS, IGNORE, LABEL_SETS, class_flip_map, coarse_lut
from spd.metrics import ConfusionMatrix, DensePoseAccumulator, PCKhAccumulator, PerImageIoU


def schp_compute_mean_iou(gts: list[np.ndarray], preds: list[np.ndarray], num_classes: int) -> dict:
    """SCHP's utils/miou.py compute_mean_ioU, transcribed (fractions instead of percentages)."""
    confusion = np.zeros((num_classes, num_classes))
    for gt, pred in zip(gts, preds):
        keep = gt != 255
        index = (gt[keep] * num_classes + pred[keep]).astype("int32")
        count = np.bincount(index)
        for i in range(num_classes):
            for j in range(num_classes):
                if i * num_classes + j < len(count):
                    confusion[i, j] += count[i * num_classes + j]
    pos, res, tp = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    return {
        "pixel_acc": tp.sum() / pos.sum(),
        "mean_acc": (tp / np.maximum(1.0, pos)).mean(),
        "per_class_iou": tp / np.maximum(1.0, pos + res - tp),
        "miou": (tp / np.maximum(1.0, pos + res - tp)).mean(),
    }


def test_hand_computed_small_example():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = ConfusionMatrix(4)
    cm.update(gt, pred)
    r = cm.compute()
    # class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 2, gt 2, pred 3 -> 2/3; class 2: 0; class 3: absent -> 0
    assert r["per_class_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0, 0.0])
    assert r["miou"] == pytest.approx(0.25)  # averaged over all classes, absent ones included
    assert r["pixel_acc"] == pytest.approx(3 / 5)  # the 255 pixel is ignored
    assert r["mean_acc"] == pytest.approx((1 / 2 + 1 + 0 + 0) / 4)
    assert r["miou_present"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_equals_schp_formula_on_random_label_maps():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 20, (37, 29)) for _ in range(5)]
    for g in gts:
        g[rng.random(g.shape) < 0.1] = 255
    preds = [
        np.where(rng.random(g.shape) < 0.6, np.where(g == 255, 0, g), rng.integers(0, 20, g.shape))
        for g in gts
    ]
    cm = ConfusionMatrix(20)
    for g, p in zip(gts, preds):
        cm.update(torch.from_numpy(g), torch.from_numpy(p))
    ours, ref = cm.compute(), schp_compute_mean_iou(gts, preds, 20)
    assert ours["per_class_iou"] == pytest.approx(list(ref["per_class_iou"]))
    for key in ("miou", "pixel_acc", "mean_acc"):
        assert ours[key] == pytest.approx(ref[key])


def test_coarse_groups_from_the_fine_confusion_equal_scoring_the_grouped_labels():
    """Regrouping the fine matrix is what scoring lut[target] against lut[pred] counts, for LIP
    (every class has a group) and ATR (belt, bag have none: their pixels drop out of the score)."""
    rng = np.random.default_rng(3)
    for label_set in ("lip", "atr"):
        lut, k = coarse_lut(label_set), len(LABEL_SETS[label_set])
        gt = rng.integers(0, k, (6, 31, 23))
        gt[rng.random(gt.shape) < 0.1] = IGNORE
        pred = np.where(
            rng.random(gt.shape) < 0.5, np.where(gt == IGNORE, 0, gt), rng.integers(0, k, gt.shape)
        )
        fine = ConfusionMatrix(k)
        fine.update(gt, pred)
        grouped_gt, grouped_pred = lut[gt], lut[pred]
        grouped_gt[grouped_pred == IGNORE] = IGNORE  # a prediction without a group is not scored
        direct = ConfusionMatrix(len(COARSE_GROUPS))
        direct.update(grouped_gt, grouped_pred)
        regrouped = fine.regroup(lut, len(COARSE_GROUPS))
        assert torch.equal(regrouped.mat, direct.mat), label_set
        assert regrouped.compute() == direct.compute()
    assert (coarse_lut("atr")[: len(LABEL_SETS["atr"])] == IGNORE).sum() == 2  # the case is exercised


def test_per_image_miou_is_the_mean_of_image_scores():
    a_gt, a_pred = np.array([[0, 1]]), np.array([[0, 1]])  # perfect: 1.0
    b_gt, b_pred = np.array([[0, 0]]), np.array([[0, 2]])  # class 0: 1/2, class 2: 0 -> 0.25
    acc = PerImageIoU(3)
    acc.update(np.stack([a_gt, b_gt]), np.stack([a_pred, b_pred]))
    assert acc.compute()["per_image_miou"] == pytest.approx((1.0 + 0.25) / 2)


def test_pckh_hand_made_case():
    gt = np.zeros((1, 16, 3), np.float32)
    gt[0, :, 2] = 1
    gt[0, 8, :2] = (50, 50)  # neck
    gt[0, 9, :2] = (50, 30)  # head top: head size 20, threshold 10 px
    gt[0, 0] = (10, 10, 0)  # a missing joint: never counted
    pred = gt[..., :2].copy()
    pred[0, 1] += (6, 8)  # 10 px away: correct (<= threshold)
    pred[0, 2] += (0, 10.5)  # just outside: wrong
    pred[0, 0] += (100, 100)  # missing in the ground truth: ignored
    acc = PCKhAccumulator(0.5)
    acc.update(pred, gt)
    r = acc.compute()
    assert r["pckh"] == pytest.approx(14 / 15)
    assert r["pckh_per_joint"][1] == 1.0 and r["pckh_per_joint"][2] == 0.0
    assert np.isnan(r["pckh_per_joint"][0])


def test_pckh_skips_samples_without_pose_or_head():
    gt = np.zeros((2, 16, 3), np.float32)
    gt[:, :, 2] = 1
    gt[:, 9, 1] = 10  # head size 10 in both
    acc = PCKhAccumulator()
    acc.update(gt[..., :2] + 100, gt, has_pose=np.array([False, True]))
    assert acc.counts[1].sum() == 16 and acc.compute()["pckh"] == 0.0


def test_densepose_uv_error_only_on_correct_parts():
    t_index = torch.tensor([[[0, 1, 2, 255]]])
    p_index = torch.tensor([[[0, 1, 3, 1]]])
    t_uv = torch.zeros(1, 2, 1, 4)
    p_uv = torch.full((1, 2, 1, 4), 0.5)
    p_uv[0, 1, 0, 1] = 0.25
    acc = DensePoseAccumulator()
    acc.update(t_index, p_index, t_uv, p_uv)
    r = acc.compute()
    assert r["dp_u_error"] == pytest.approx(0.5) and r["dp_v_error"] == pytest.approx(0.25)
    assert r["dp_uv_error"] == pytest.approx(0.375)
    # I mIoU over 25 classes: bg 1/1, part 1 1/1, parts 2 and 3: 0 -> 2 / 25
    assert r["dp_miou"] == pytest.approx(2 / 25)


def test_accumulators_sum_across_processes(tmp_path):
    """Two gloo processes, each with half the images, reduce to the single-process result."""
    import torch.multiprocessing as mp

    rng = np.random.default_rng(1)
    gts = rng.integers(0, 5, (4, 8, 8))
    preds = rng.integers(0, 5, (4, 8, 8))
    single = ConfusionMatrix(5)
    single.update(gts, preds)
    out = tmp_path / "reduced.pt"
    mp.spawn(_reduce_worker, args=(str(tmp_path), gts, preds), nprocs=2, join=True)
    assert torch.equal(torch.load(out, weights_only=True), single.mat)


def _reduce_worker(rank: int, tmp: str, gts: np.ndarray, preds: np.ndarray) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=2
    )  # a file rendezvous: no network port needed
    cm = ConfusionMatrix(5)
    cm.update(gts[rank::2], preds[rank::2])
    cm.reduce_from_all_processes()
    if rank == 0:
        torch.save(cm.mat, f"{tmp}/reduced.pt")
    dist.destroy_process_group()


def _lip_confusion(cells: dict[tuple[str, str], int]) -> ConfusionMatrix:
    names = LABEL_SETS["lip"]
    counts = np.zeros((len(names), len(names)), np.int64)
    for (truth, pred), n in cells.items():
        counts[names.index(truth), names.index(pred)] = n
    return ConfusionMatrix.from_counts(counts)


def test_sides_tells_a_model_blind_to_facing_from_one_that_knows_it():
    """Left/right parts found but their sides guessed: side accuracy at chance (0.5) while the
    merged pairs score well — the failure mIoU alone cannot tell from missing the limbs."""
    flip = class_flip_map("lip")
    pairs = [("left_arm", "right_arm"), ("left_leg", "right_leg"), ("left_shoe", "right_shoe")]
    blind = _lip_confusion(
        {(a, b): 50 for p in pairs for a in p for b in p} | {("background", "background"): 900}
    )
    sides = blind.sides(flip)
    assert sides["side_accuracy"] == pytest.approx(0.5)
    assert sides["side_merged_miou"] == pytest.approx(1.0)
    knows = _lip_confusion(
        {(a, a): 90 for p in pairs for a in p} | {(a, "background"): 10 for p in pairs for a in p}
    )
    sides = knows.sides(flip)
    assert sides["side_accuracy"] == pytest.approx(1.0)
    assert sides["side_merged_miou"] == pytest.approx(180 / 200)
    assert ConfusionMatrix(3).sides(np.arange(3)) == {}  # a label set without sided classes
