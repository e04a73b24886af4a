"""Evaluation accumulators, summable across processes (torch.distributed all_reduce).

Segmentation follows SCHP's `compute_mean_ioU` exactly (pixels with ground truth 255 ignored;
per-class IoU = tp / max(1, gt + pred - tp), averaged over *all* classes, absent ones included),
reported as fractions in [0, 1] rather than SCHP's percentages.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from spd.labels import HEAD_TOP, IGNORE, NECK, NUM_DP_PARTS, NUM_JOINTS


def _as_long(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).long().cpu()


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum a CPU tensor over all processes in place (no-op without an initialised process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    if dist.get_backend() == "nccl":
        moved = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(moved)
        t.copy_(moved.cpu())
    else:
        dist.all_reduce(t)
    return t


class ConfusionMatrix:
    """mat[g, p] counts pixels of ground-truth class g predicted as p (ignore label skipped)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, target: torch.Tensor | np.ndarray, pred: torch.Tensor | np.ndarray) -> None:
        t, p = _as_long(target).flatten(), _as_long(pred).flatten()
        keep = (t != IGNORE) & (t >= 0) & (t < self.num_classes)
        n = self.num_classes
        self.mat += torch.bincount(t[keep] * n + p[keep].clamp(0, n - 1), minlength=n * n).view(n, n)

    @classmethod
    def from_counts(cls, counts: torch.Tensor | np.ndarray | list) -> ConfusionMatrix:
        """A matrix of counts made elsewhere (e.g. `spd.engine.evaluate`'s `confusion`)."""
        mat = torch.as_tensor(np.asarray(counts), dtype=torch.int64)
        if mat.dim() != 2 or mat.shape[0] != mat.shape[1]:
            raise ValueError(f"confusion counts: expected a square (K, K) matrix, got {tuple(mat.shape)}")
        out = cls(mat.shape[0])
        out.mat = mat.clone()
        return out

    def reduce_from_all_processes(self) -> None:
        all_reduce_(self.mat)

    def regroup(self, lut: np.ndarray, num_groups: int) -> ConfusionMatrix:
        """The confusion of class groups: rows and columns summed by `lut` (class id -> group id).

        Equals updating a `num_groups` matrix with lut[target], lut[pred], except that a pixel whose
        class has no group (lut 255) is dropped from the rows (truth) and from the columns (prediction).
        """
        groups = torch.as_tensor(np.asarray(lut)[: self.num_classes]).long()  # (K,)
        keep = groups != IGNORE
        rows = torch.zeros(num_groups, self.num_classes, dtype=torch.int64)
        rows.index_add_(0, groups[keep], self.mat[keep])  # (G, K): truth summed into groups
        out = ConfusionMatrix(num_groups)
        out.mat.index_add_(1, groups[keep], rows[:, keep])  # (G, G): predictions summed too
        return out

    def sides(self, flip_map: np.ndarray) -> dict[str, float]:
        """How the classes of a person's own side (those a horizontal flip swaps: left/right arm,
        leg, shoe) fare: `side_accuracy`, of their pixels predicted as the same body part on either
        side, the fraction given the correct side (0.5: blind to which way the person faces), and
        `side_merged_miou`, their mIoU with each left/right pair merged (what their IoU would be if
        every side were correct; absent pairs count 0, as SCHP's mIoU counts absent classes).
        Empty when the label set has no sided classes."""
        m = self.mat.double()
        flip = torch.as_tensor(np.asarray(flip_map)[: self.num_classes]).long()  # (K,)
        sided = torch.nonzero(flip != torch.arange(self.num_classes)).flatten()
        if len(sided) == 0:
            return {}
        correct, swapped = m[sided, sided].sum(), m[sided, flip[sided]].sum()
        # Each pair one group, every other class one "rest" group that keeps their errors counted.
        pair_of = torch.minimum(torch.arange(self.num_classes), flip)  # (K,) a pair's lower id
        pairs = torch.unique(pair_of[sided])  # (P,)
        lut = np.full(self.num_classes, len(pairs), np.int64)
        lut[sided.numpy()] = torch.searchsorted(pairs, pair_of[sided]).numpy()
        merged = self.regroup(lut, len(pairs) + 1).compute()["per_class_iou"][: len(pairs)]
        return {
            "side_accuracy": float(correct / (correct + swapped)) if correct + swapped > 0 else 0.0,
            "side_merged_miou": float(np.mean(merged)),
        }

    def compute(self) -> dict:
        m = self.mat.double()
        pos, res, tp = m.sum(1), m.sum(0), m.diag()  # ground truth, predicted, correct per class
        iou = tp / torch.clamp(pos + res - tp, min=1.0)
        present = pos > 0
        return {
            "pixel_acc": float(tp.sum() / pos.sum()) if pos.sum() > 0 else 0.0,
            "mean_acc": float((tp / pos.clamp(min=1.0)).mean()),
            "per_class_iou": iou.tolist(),
            "miou": float(iou.mean()),
            # not SCHP: mean over the classes present in the ground truth (small val sets miss classes)
            "miou_present": float(iou[present].mean()) if present.any() else 0.0,
        }


class PerImageIoU:
    """The per-image variant the SPD authors' code reports — NOT the standard (dataset) mIoU.

    Per image: IoU of every class that occurs in its ground truth or prediction (255 ignored),
    averaged over those classes; the score is the mean over images.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.total = torch.zeros(2, dtype=torch.float64)  # sum of per-image mIoU, number of images

    def update(self, target: torch.Tensor | np.ndarray, pred: torch.Tensor | np.ndarray) -> None:
        t, p = _as_long(target), _as_long(pred)
        if t.dim() == 2:
            t, p = t[None], p[None]
        for ti, pi in zip(t, p):
            cm = ConfusionMatrix(self.num_classes)
            cm.update(ti, pi)
            m = cm.mat.double()
            pos, res, tp = m.sum(1), m.sum(0), m.diag()
            union = pos + res - tp
            seen = union > 0
            if seen.any():
                self.total[0] += float((tp[seen] / union[seen]).mean())
                self.total[1] += 1

    def reduce_from_all_processes(self) -> None:
        all_reduce_(self.total)

    def compute(self) -> dict:
        n = float(self.total[1])
        return {"per_image_miou": float(self.total[0]) / n if n else 0.0}


class PCKhAccumulator:
    """PCKh@threshold: a joint is correct if within threshold x head size (|neck - head top|).

    Joints missing in the ground truth (v == 0) and samples without pose or a usable head size
    are excluded. Reports the pooled mean over all counted joints and the per-joint values.
    """

    def __init__(self, threshold: float = 0.5, num_joints: int = NUM_JOINTS) -> None:
        self.threshold = threshold
        self.counts = torch.zeros(2, num_joints, dtype=torch.float64)  # correct, total

    def update(
        self,
        pred: torch.Tensor | np.ndarray,
        target: torch.Tensor | np.ndarray,
        has_pose: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """pred (B, J, >=2) x, y; target (B, J, 3) x, y, v — in the same pixel coordinates."""
        p = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred).double().cpu()
        g = (
            torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor) else target)
            .double()
            .cpu()
        )
        if p.dim() == 2:
            p, g = p[None], g[None]
        visible = (g[..., 2] > 0) & torch.isfinite(g[..., :2]).all(-1)  # (B, J)
        head = (g[:, NECK, :2] - g[:, HEAD_TOP, :2]).norm(dim=-1)  # (B,)
        usable = visible[:, NECK] & visible[:, HEAD_TOP] & (head > 0)
        if has_pose is not None:
            usable &= torch.as_tensor(has_pose).bool().cpu().view(-1)  # a list, array or any device
        counted = visible & usable[:, None]
        dist_ = (p[..., :2] - g[..., :2].nan_to_num(0.0)).norm(dim=-1)  # (B, J)
        correct = counted & (dist_ <= self.threshold * head[:, None])
        self.counts[0] += correct.sum(0).double()
        self.counts[1] += counted.sum(0).double()

    def reduce_from_all_processes(self) -> None:
        all_reduce_(self.counts)

    def compute(self) -> dict:
        correct, total = self.counts
        per_joint = torch.where(total > 0, correct / total.clamp(min=1), torch.full_like(total, float("nan")))
        return {
            "pckh": float(correct.sum() / total.sum()) if total.sum() > 0 else 0.0,
            "pckh_per_joint": per_joint.tolist(),  # NaN where a joint never occurs
        }


class DensePoseAccumulator:
    """Part-index mIoU (background + 24 parts, SCHP formula) and the mean absolute U / V error on
    pixels whose part is predicted correctly (foreground only, where UV labels are valid)."""

    def __init__(self, num_parts: int = NUM_DP_PARTS) -> None:
        self.index = ConfusionMatrix(num_parts + 1)
        self.uv = torch.zeros(3, dtype=torch.float64)  # sum |du|, sum |dv|, pixels

    def update(
        self,
        target_index: torch.Tensor,
        pred_index: torch.Tensor,
        target_uv: torch.Tensor | None = None,
        pred_uv: torch.Tensor | None = None,
        uv_valid: torch.Tensor | None = None,
    ) -> None:
        """target_index/pred_index (B, H, W); target_uv/pred_uv (B, 2, H, W) in [0, 1]; uv_valid (B,)."""
        t, p = _as_long(target_index), _as_long(pred_index)
        self.index.update(t, p)
        if target_uv is None or pred_uv is None:
            return
        mask = (t == p) & (t >= 1) & (t != IGNORE)
        if uv_valid is not None:
            mask &= torch.as_tensor(uv_valid).bool().cpu().view(-1, *([1] * (t.dim() - 1)))
        tu, pu = torch.as_tensor(target_uv).double().cpu(), torch.as_tensor(pred_uv).double().cpu()
        err = (pu - tu).abs()  # (B, 2, H, W)
        self.uv[0] += err[:, 0][mask].sum()
        self.uv[1] += err[:, 1][mask].sum()
        self.uv[2] += mask.sum()

    def reduce_from_all_processes(self) -> None:
        self.index.reduce_from_all_processes()
        all_reduce_(self.uv)

    def compute(self) -> dict:
        idx = self.index.compute()
        n = float(self.uv[2])
        u_err = float(self.uv[0]) / n if n else float("nan")
        v_err = float(self.uv[1]) / n if n else float("nan")
        return {
            "dp_miou": idx["miou"],
            "dp_pixel_acc": idx["pixel_acc"],
            "dp_u_error": u_err,
            "dp_v_error": v_err,
            "dp_uv_error": (u_err + v_err) / 2 if n else float("nan"),
        }
