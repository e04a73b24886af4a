"""Loss rules: λ-weighted sum, per-sample label masks, exactly-zero terms for unlabelled batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spd.config import LossConfig
from spd.data.targets import decode_heatmaps, downsample_iuv, joint_heatmaps
from spd.losses import DensePoseLoss, PoseLoss, SegLoss, SPDLoss
from tests.fixtures.model import make_batch

ALL = ("seg", "pose", "densepose")


def _outputs(batch: dict, seed: int = 0, requires_grad: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, S = batch["parsing"].shape[0], batch["parsing"].shape[-1]
    h = -(-S // 8)
    shapes = {"seg_init": 20, "seg": 20, "pose_init": 16, "pose": 16, "dp_index": 25, "dp_u": 24, "dp_v": 24}
    out = {k: torch.randn(B, c, h, h, generator=g) for k, c in shapes.items()}
    out["dp_u"], out["dp_v"] = out["dp_u"].sigmoid(), out["dp_v"].sigmoid()
    return {k: v.requires_grad_(requires_grad) for k, v in out.items()}


def _take(batch: dict, idx: list[int]) -> dict:
    return {k: v[idx] for k, v in batch.items()}


@pytest.fixture(scope="module")
def batch():
    return make_batch(4, 64, seed=3)


def test_total_is_lambda_weighted_sum_of_terms(batch):
    out = _outputs(batch)
    cfg = LossConfig(lambda_seg=0.5, lambda_pose=3.0, lambda_densepose=2.0)
    total, comp = SPDLoss(ALL, cfg)(out, batch)
    expected = 0.5 * comp["loss_seg"] + 3.0 * comp["loss_pose"] + 2.0 * comp["loss_densepose"]
    assert torch.allclose(total, expected)
    assert comp["loss_seg"] > 0 and comp["loss_pose"] > 0 and comp["loss_densepose"] > 0
    assert set(SPDLoss(("seg",), cfg)(out, batch)[1]) == {"loss_seg", "loss_seg_init"}


def test_seg_loss_is_ce_on_initial_and_refined_logits_ignoring_255(batch):
    out = _outputs(batch)
    target = batch["parsing"]
    parts = SegLoss()(out, batch)
    for key in ("seg_init", "seg"):
        up = F.interpolate(out[key], size=target.shape[-2:], mode="bilinear", align_corners=False)
        assert torch.allclose(parts[key], F.cross_entropy(up, target, ignore_index=255), atol=1e-5)
    assert (target == 255).any()  # the letterbox padding is really being ignored


def test_samples_without_labels_neither_add_to_nor_dilute_a_term(batch):
    """A mixed batch's pose / DensePose terms equal those of its labelled samples alone."""
    out = _outputs(batch, requires_grad=False)
    mixed = dict(batch, has_pose=torch.tensor([True, False, True, False]),
                 has_iuv=torch.tensor([False, True, True, False]))  # fmt: skip
    _, comp = SPDLoss(ALL, LossConfig())(out, mixed)
    _, pose_only = SPDLoss(ALL, LossConfig())(_take(out, [0, 2]), _take(mixed, [0, 2]))
    _, iuv_only = SPDLoss(ALL, LossConfig())(_take(out, [1, 2]), _take(mixed, [1, 2]))
    assert torch.allclose(comp["loss_pose"], pose_only["loss_pose"], atol=1e-6)
    assert torch.allclose(comp["loss_densepose"], iuv_only["loss_densepose"], atol=1e-6)


def test_batch_without_any_pose_or_iuv_label_gives_exactly_zero_and_a_valid_graph(batch):
    out = _outputs(batch)
    none = dict(batch, has_pose=torch.zeros(4, dtype=torch.bool), has_iuv=torch.zeros(4, dtype=torch.bool))
    total, comp = SPDLoss(ALL, LossConfig())(out, none)
    assert comp["loss_pose"].item() == 0.0 and comp["loss_densepose"].item() == 0.0
    assert math.isfinite(total.item()) and torch.allclose(total, comp["loss_seg"])
    total.backward()
    assert all(torch.isfinite(v.grad).all() for v in out.values())
    assert out["pose"].grad.abs().sum() == 0 and out["dp_u"].grad.abs().sum() == 0


def test_all_ignored_segmentation_gives_zero_not_nan(batch):
    out = _outputs(batch)
    blank = dict(batch, parsing=torch.full_like(batch["parsing"], 255))
    parts = SegLoss()(out, blank)
    assert parts["loss"].item() == 0.0


def test_uv_loss_only_where_uv_is_valid(batch):
    out = _outputs(batch, requires_grad=False)
    flipped = dict(batch, uv_valid=torch.zeros(4, dtype=torch.bool))
    parts = DensePoseLoss()(out, flipped)
    assert parts["dp_uv"].item() == 0.0 and parts["dp_index"] > 0


def test_pose_loss_is_zero_for_perfect_heatmaps(batch):
    target, weight = joint_heatmaps(batch["keypoints"], (64, 64), sigma=1.5)
    out = {"pose_init": target.clone(), "pose": target.clone()}
    assert PoseLoss(1.5)(out, batch)["loss"].item() == 0.0
    assert weight.sum() > 0


def test_heatmaps_mask_missing_and_outside_joints_and_decode_back():
    kp = torch.tensor([[[20.0, 30.0, 1.0], [5.0, 5.0, 0.0], [70.0, 10.0, 1.0], [float("nan"), 3.0, 1.0]]])
    maps, weight = joint_heatmaps(kp, (64, 64), sigma=1.0)
    assert weight.tolist() == [[1.0, 0.0, 0.0, 0.0]]  # missing, outside and NaN joints: no target
    assert maps[0, 1:].abs().sum() == 0 and maps[0, 0].max() > 0.5
    decoded = decode_heatmaps(maps)[0, 0]
    assert abs(decoded[0] - 20.0) <= 2.5 and abs(decoded[1] - 30.0) <= 2.5  # within a head pixel


def test_iuv_downsampling_keeps_part_ids_sharp():
    index = torch.zeros(1, 16, 16, dtype=torch.long)
    index[0, :, 8:] = 7  # a vertical boundary between part 0 and part 7
    uv = torch.rand(1, 2, 16, 16)
    small, small_uv = downsample_iuv(index, uv, stride=4)
    assert small.shape == (1, 4, 4) and set(small.unique().tolist()) == {0, 7}  # no blended ids
    assert torch.equal(small[0, :, :2], torch.zeros(4, 2, dtype=torch.long))
    assert torch.equal(small_uv[0, :, 0, 0], uv[0, :, 2, 2])  # U, V from the same pixel as I


def test_a_training_step_never_reads_a_tensor_value_on_the_host():
    # On a GPU such a read (.item(), bool(t), nonzero) stalls the CPU until the device catches up;
    # the step must stay asynchronous for every task set, with partly labelled batches too.
    from torch.profiler import ProfilerActivity, profile

    from spd.config import ModelConfig
    from spd.model import build_model

    batch = make_batch(2, 64, seed=5, has_pose=[True, False], has_iuv=[False, True])
    for tasks in [("seg",), ("seg", "pose"), ("seg", "densepose"), ALL]:
        model = build_model(ModelConfig(backbone="resnet18", head_channels=16, tasks=tasks), 20)
        criterion = SPDLoss(tasks, LossConfig(lambda_seg=1, lambda_pose=1, lambda_densepose=1))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss, _ = criterion(model(batch["image"]), batch)
            loss.backward()
        reads = {e.key for e in prof.key_averages()} & {
            "aten::item",
            "aten::_local_scalar_dense",
            "aten::nonzero",
        }
        assert not reads, (tasks, reads)
