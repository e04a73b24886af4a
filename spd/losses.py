"""The three task losses and their λ-weighted, label-mask-aware sum.

Every loss normalises by what is actually labelled: a sample without pose / IUV labels adds
nothing to that term and is not counted in its denominator, and a batch with no labelled sample
gives a term of exactly 0 that still belongs to the graph (so backward and DDP stay happy).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from spd.config import LossConfig
from spd.data.targets import HEAD_STRIDE, downsample_iuv, joint_heatmaps
from spd.labels import IGNORE
from spd.sides import to_image_frame

Components = dict[str, torch.Tensor]


def _masked_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count.clamp(min=1)


def _ce_sum(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed CE over non-ignored pixels and their count (mean CE would be NaN with none)."""
    loss = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")
    return loss, (target != IGNORE).sum()


def lovasz_softmax(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax (Berman et al. 2018): a convex surrogate of 1 - IoU, averaged over the classes
    present in the batch. probs (B, K, H, W) softmax, target (B, H, W) with IGNORE pixels left out.

    CE rewards the frequent classes' pixels; this term weighs every class's IoU equally, which is
    what mIoU scores, so thin and rare parts (gloves, shoes, the left/right limbs) get their share.
    """
    K = probs.shape[1]
    probs = probs.permute(0, 2, 3, 1).reshape(-1, K)  # (N, K)
    target = target.reshape(-1)
    keep = target != IGNORE
    probs, target = probs[keep], target[keep]
    losses = []
    for k in torch.unique(target):
        fg = (target == k).float()  # (N,)
        errors = (fg - probs[:, k]).abs()
        errors, order = torch.sort(errors, descending=True)
        fg = fg[order]
        gts = fg.sum()
        intersection = gts - fg.cumsum(0)
        union = gts + (1.0 - fg).cumsum(0)
        jaccard = 1.0 - intersection / union
        jaccard[1:] = jaccard[1:] - jaccard[:-1]  # gradient of the Lovász extension
        losses.append(torch.dot(errors, jaccard))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


class SegLoss(nn.Module):
    """Cross-entropy (ignore 255) on initial and refined logits, upsampled to the label size, plus
    `lovasz` x Lovász-softmax on the refined logits (0: CE only).

    A model with a facing head (its outputs hold `facing`; spd.sides) is scored in the image frame:
    its seg_init and seg_image logits against the labels with the sided classes of mirrored people
    swapped, plus binary CE of its mirrored logit, all where the labels tell the facing.
    """

    def __init__(self, lovasz: float = 0.0) -> None:
        super().__init__()
        self.lovasz = lovasz

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> Components:
        target = batch["parsing"]  # (B, H, W) int64
        size = target.shape[-2:]
        refined = "seg"
        parts = {}
        if "facing" in outputs:
            refined = "seg_image"
            target, mirrored, known = to_image_frame(target, outputs[refined].shape[1])
            bce = F.binary_cross_entropy_with_logits(
                outputs["facing"].float().view(-1), mirrored.float(), reduction="none"
            )  # (B,)
            parts["seg_facing"] = _masked_mean((bce * known).sum(), known.sum())
        for key in ("seg_init", refined):
            logits = F.interpolate(outputs[key].float(), size=size, mode="bilinear", align_corners=False)
            total, count = _ce_sum(logits, target)
            parts[key] = _masked_mean(total, count)
            if key == refined and self.lovasz > 0:
                parts["seg_lovasz"] = lovasz_softmax(logits.softmax(1), target)
        loss = parts["seg_init"] + parts[refined] + self.lovasz * parts.get("seg_lovasz", 0.0)
        loss = loss + parts.get("seg_facing", 0.0)
        return {"loss": loss, **parts}


class PoseLoss(nn.Module):
    """MSE between predicted and Gaussian target heatmaps, over labelled joints only.

    Per joint the squared error is averaged over pixels; the term is the mean over labelled
    (sample, joint) pairs of samples with has_pose, for the initial and the refined maps.
    """

    def __init__(self, heatmap_sigma: float = 1.5, stride: int = HEAD_STRIDE) -> None:
        super().__init__()
        self.sigma = heatmap_sigma
        self.stride = stride

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> Components:
        image_size = tuple(batch["parsing"].shape[-2:])
        target, weight = joint_heatmaps(
            batch["keypoints"], image_size, self.sigma, self.stride, batch.get("has_pose")
        )  # (B, J, h, w), (B, J)
        count = weight.sum()
        parts = {}
        for key in ("pose_init", "pose"):
            err = ((outputs[key].float() - target) ** 2).mean(dim=(-2, -1))  # (B, J)
            parts[key] = _masked_mean((err * weight).sum(), count)
        return {"loss": parts["pose_init"] + parts["pose"], **parts}


class DensePoseLoss(nn.Module):
    """CE on the part index I + smooth-L1 on the true part's U, V at its foreground pixels.

    Computed at head resolution against nearest-downsampled IUV labels; only samples with
    has_iuv count, and U, V only where uv_valid (a flipped sample's UV is not mirror-exact).
    """

    def __init__(self, stride: int = HEAD_STRIDE) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> Components:
        index, uv = downsample_iuv(
            batch["dp_index"], batch["dp_uv"].float(), self.stride
        )  # (B,h,w) (B,2,h,w)
        B = index.shape[0]
        has_iuv = batch.get("has_iuv")
        if has_iuv is not None:
            index = torch.where(has_iuv.view(B, 1, 1).to(torch.bool), index, torch.full_like(index, IGNORE))
        logits = outputs["dp_index"].float()
        if logits.shape[-2:] != index.shape[-2:]:
            raise ValueError(
                f"dp_index logits {tuple(logits.shape)} do not match IUV targets {tuple(index.shape)}"
            )
        total, count = _ce_sum(logits, index)
        loss_index = _masked_mean(total, count)

        fg = (index >= 1) & (index != IGNORE)  # (B, h, w)
        uv_valid = batch.get("uv_valid")
        if uv_valid is not None:
            fg = fg & uv_valid.view(B, 1, 1).to(torch.bool)
        part = (index.clamp(min=1, max=outputs["dp_u"].shape[1]) - 1).unsqueeze(1)  # (B, 1, h, w)
        pred_u = outputs["dp_u"].float().gather(1, part).squeeze(1)  # (B, h, w)
        pred_v = outputs["dp_v"].float().gather(1, part).squeeze(1)
        err = F.smooth_l1_loss(pred_u, uv[:, 0], reduction="none") + F.smooth_l1_loss(
            pred_v, uv[:, 1], reduction="none"
        )
        loss_uv = _masked_mean((err * fg).sum(), fg.sum())
        return {"loss": loss_index + loss_uv, "dp_index": loss_index, "dp_uv": loss_uv}


class SPDLoss(nn.Module):
    """L = λs·Ls + λp·Lp + λd·Ld over the enabled tasks -> (total, components).

    components: loss_seg, loss_pose, loss_densepose (enabled tasks only; the unweighted terms)
    and their parts (loss_seg_init, loss_pose_init, loss_dp_index, loss_dp_uv), all detached.
    """

    def __init__(
        self,
        tasks: tuple[str, ...] | list[str],
        lambdas: LossConfig | Mapping[str, float],
        heatmap_sigma: float | None = None,
    ) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        if isinstance(lambdas, LossConfig):
            weights = {
                "seg": lambdas.lambda_seg,
                "pose": lambdas.lambda_pose,
                "densepose": lambdas.lambda_densepose,
            }
            sigma = lambdas.heatmap_sigma if heatmap_sigma is None else heatmap_sigma
            lovasz = lambdas.seg_lovasz
        else:
            weights = {"seg": 1.0, "pose": 1.0, "densepose": 1.0, **dict(lambdas)}
            sigma = 1.5 if heatmap_sigma is None else heatmap_sigma
            lovasz = 0.0
        self.lambdas = {t: float(weights[t]) for t in self.tasks}
        self.seg = SegLoss(lovasz)
        self.pose = PoseLoss(sigma) if "pose" in self.tasks else None
        self.densepose = DensePoseLoss() if "densepose" in self.tasks else None

    @classmethod
    def from_config(cls, tasks: tuple[str, ...], cfg: LossConfig) -> SPDLoss:
        return cls(tasks, cfg, cfg.heatmap_sigma)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Components]:
        terms = {"seg": self.seg(outputs, batch)}
        if self.pose is not None:
            terms["pose"] = self.pose(outputs, batch)
        if self.densepose is not None:
            terms["densepose"] = self.densepose(outputs, batch)
        total = sum(self.lambdas[t] * parts["loss"] for t, parts in terms.items())
        components: Components = {}
        for t, parts in terms.items():
            components[f"loss_{t}"] = parts["loss"].detach()
            for name, value in parts.items():
                if name not in ("loss", "seg", "seg_image", "pose"):
                    components[f"loss_{name}"] = value.detach()
        return total, components
