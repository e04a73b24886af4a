"""Training and evaluation loops (torchvision references style): plain functions over a loader.

Both consume batches collated from `SPDDataset` dicts (see docs/ARCHITECTURE.md). Evaluation
accumulators are all-reduced when torch.distributed is initialised, so with a sharding sampler
without duplicates the metrics equal a single-process evaluation.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spd.config import TrainConfig
from spd.data.targets import decode_heatmaps
from spd.labels import IGNORE
from spd.metrics import ConfusionMatrix, DensePoseAccumulator, PCKhAccumulator, PerImageIoU, all_reduce_
from spd.tta import flip_average


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; no weight decay on norm weights and biases (1-d parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def poly_lr_scheduler(
    optimizer: torch.optim.Optimizer, total_iters: int, power: float = 0.9
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration poly decay lr = base * (1 - it / total_iters) ** power (stepped every batch)."""
    total = max(1, int(total_iters))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: (1.0 - min(it, total) / total) ** power)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_iters: int, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `cfg.warmup_epochs`, then poly or cosine decay to 0 at `total_iters`.

    Stepped every batch. From random init a warm-up lets a higher peak lr through the first
    steps without BatchNorm statistics and Adam moments blowing up.
    """
    total = max(1, int(total_iters))
    warmup = min(total - 1, int(round(cfg.warmup_epochs * iters_per_epoch)))

    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / (warmup + 1)
        progress = min(it - warmup, total - warmup) / max(1, total - warmup)  # 0 -> 1 after warm-up
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return (1.0 - progress) ** cfg.poly_power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: Mapping, device: torch.device) -> dict:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
    }


def _forward(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    channels_last: bool,
) -> dict[str, torch.Tensor]:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_context(device, autocast_dtype):
        return model(x)


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    loader: Iterable[Mapping[str, torch.Tensor]],
    device: torch.device | str,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    batch_transform: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """One pass over `loader`; returns mean loss components, `loss`, `lr` and `images_per_s`.

    on_step(step, {'loss': ..., 'loss_seg': ...}) is called after every optimizer step (logging,
    fault-injection hooks). batch_transform runs on each batch once it is on `device` (e.g.
    `spd.data.device_augment.augment_batch` after a CompactDataset loader). A non-finite loss
    raises FloatingPointError instead of corrupting weights.
    """
    device = torch.device(device)
    model.train()
    sums: dict[str, float] = {}
    steps = images = 0
    start = time.perf_counter()
    for step, raw in enumerate(loader):
        batch = to_device(raw, device)
        if batch_transform is not None:
            batch = batch_transform(batch)
        outputs = _forward(model, batch["image"], device, autocast_dtype, channels_last)
        loss, components = criterion(outputs, batch)  # losses run in fp32 on upcast outputs
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        values = {"loss": float(loss.detach())} | {k: float(v) for k, v in components.items()}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        steps += 1
        images += batch["image"].shape[0]
        if on_step is not None:
            on_step(step, values)
    elapsed = time.perf_counter() - start
    out = {k: v / max(steps, 1) for k, v in sums.items()}
    out["lr"] = optimizer.param_groups[0]["lr"]
    out["images_per_s"] = images / elapsed if elapsed > 0 else 0.0
    return out


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)


LabelMaps = tuple[np.ndarray, np.ndarray]  # (truth lut, prediction lut): (256,) ids -> shared ids


class EvalAccumulators:
    """What `evaluate` counts: the confusion matrix, per-image mIoU, PCKh and DensePose per `tasks`."""

    def __init__(self, num_classes: int, tasks: tuple[str, ...] | list[str]) -> None:
        self.confusion = ConfusionMatrix(num_classes)
        self.per_image = PerImageIoU(num_classes)
        self.pckh = PCKhAccumulator() if "pose" in tasks else None
        self.densepose = DensePoseAccumulator() if "densepose" in tasks else None
        self.count = torch.zeros(1, dtype=torch.float64)  # images

    def update(
        self, batch: Mapping, outputs: Mapping[str, torch.Tensor], label_maps: LabelMaps | None
    ) -> None:
        """One batch's head outputs scored at label resolution (the packed image size)."""
        size = tuple(batch["parsing"].shape[-2:])
        target, pred = batch["parsing"], upsample(outputs["seg"], size).argmax(1)  # (B, H, W)
        if label_maps is not None:
            target, pred = map_labels(target, pred, label_maps)
        self.confusion.update(target, pred)
        self.per_image.update(target, pred)
        self.count += target.shape[0]
        if self.pckh is not None:
            joints = decode_heatmaps(outputs["pose"])  # (B, J, 3) in input pixels
            self.pckh.update(joints, batch["keypoints"], batch.get("has_pose"))
        if self.densepose is not None:
            self._update_densepose(batch, outputs, size)

    def _update_densepose(self, batch: Mapping, outputs: Mapping[str, torch.Tensor], size: tuple) -> None:
        has_iuv = batch.get("has_iuv")
        n = batch["parsing"].shape[0]
        keep = has_iuv.bool() if has_iuv is not None else torch.ones(n, dtype=torch.bool)
        if not keep.any():
            return
        keep = keep.to(batch["parsing"].device)
        part = upsample(outputs["dp_index"][keep], size).argmax(1)  # (b, H, W)
        gather = (part.clamp(min=1) - 1).unsqueeze(1)
        u = upsample(outputs["dp_u"][keep], size).gather(1, gather)  # float U, V: no quantisation
        v = upsample(outputs["dp_v"][keep], size).gather(1, gather)
        uv_valid = batch.get("uv_valid")
        self.densepose.update(
            batch["dp_index"][keep],
            part,
            batch["dp_uv"][keep],
            torch.cat([u, v], dim=1),
            uv_valid[keep] if uv_valid is not None else None,
        )

    def reduce_from_all_processes(self) -> None:
        self.confusion.reduce_from_all_processes()
        self.per_image.reduce_from_all_processes()
        all_reduce_(self.count)
        for acc in (self.pckh, self.densepose):
            if acc is not None:
                acc.reduce_from_all_processes()

    def compute(self) -> dict:
        metrics: dict = self.confusion.compute() | self.per_image.compute()
        for acc in (self.pckh, self.densepose):
            if acc is not None:
                metrics |= acc.compute()
        metrics["num_images"] = int(self.count.item())
        metrics["confusion"] = self.confusion.mat.tolist()
        return {k: _nan_to_none(v) for k, v in metrics.items()}


def map_labels(
    target: torch.Tensor, pred: torch.Tensor, label_maps: LabelMaps
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truth and prediction in a shared label space; a pixel whose prediction has no counterpart
    (255) is not scored, like one whose truth has none."""
    target_lut, pred_lut = (torch.as_tensor(lut, device=target.device).long() for lut in label_maps)
    target, pred = target_lut[target], pred_lut[pred]
    return target.masked_fill(pred == IGNORE, IGNORE), pred


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    device: torch.device | str,
    *,
    num_classes: int,
    tasks: tuple[str, ...] | list[str],
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    flip_tta: bool = False,
    label_set: str | None = None,
    label_maps: LabelMaps | None = None,
) -> dict:
    """Metrics over `loader` at label resolution (the packed image size).

    Keys: miou, pixel_acc, mean_acc, per_class_iou (list), miou_present, per_image_miou; with
    pose: pckh, pckh_per_joint; with densepose: dp_miou, dp_pixel_acc, dp_uv_error, dp_u_error,
    dp_v_error; always num_images and confusion ((K, K) pixel counts, rows truth, columns
    prediction; scores derived from it, e.g. `ConfusionMatrix.regroup`, need no second pass).
    flip_tta: outputs averaged with the mirrored image's (`spd.tta.flip_average`, as the predictor;
    needs the model's `label_set`). label_maps (truth lut, prediction lut): score in a shared label
    space of `num_classes` labels, e.g. the coarse groups for a model trained on another label set
    than the data's (pass tasks=("seg",) then).
    """
    if flip_tta and label_set is None:
        raise ValueError("flip_tta needs the model's label_set (its left/right class pairs)")
    device = torch.device(device)
    model.eval()
    acc = EvalAccumulators(num_classes, tasks)

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return _forward(model, x, device, autocast_dtype, channels_last)

    for raw in loader:
        batch = to_device(raw, device)
        x = batch["image"]
        outputs = flip_average(forward, x, label_set) if flip_tta else forward(x)
        acc.update(batch, outputs, label_maps)
    acc.reduce_from_all_processes()
    return acc.compute()


def _nan_to_none(v: object) -> object:
    """NaN (a metric with nothing to measure) -> None, so reports stay valid JSON."""
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return None if isinstance(v, float) and math.isnan(v) else v
