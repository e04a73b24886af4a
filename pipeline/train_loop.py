"""The per-worker loop of `spd train` (and of every Tune trial and ablation cell).

Every Ray Train worker runs `train_loop_per_worker`: DDP (gloo on CPU, NCCL on GPU), a distributed
sampler for training, a duplicate-free validation shard per worker whose metrics `spd.engine.evaluate`
all-reduces, a checkpoint every epoch (train_state), MLflow logging and one progress line per epoch
from rank 0. The worker receives the driver's typed, frozen `LoopConfig`; nothing is re-parsed.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import runtime, train_state
from pipeline.config import Params

CONFIG_KEY = "loop"  # the one entry of Ray's train_loop_config: a LoopConfig


@dataclass(frozen=True)
class LoopConfig:
    """What the driver hands every worker (pickled by Ray)."""

    params: Params
    project_root: str
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None  # None: no MLflow from the workers
    fault_marker: str | None = None  # path; None: no fault hook
    fingerprint: str | None = None
    verbose: bool = True  # rank 0 prints one line per epoch


@dataclass
class _Setup:
    """A worker's data, model and optimisation state."""

    train_split: Any
    val_ds: Any
    sampler: Any
    train_loader: Any
    val_loader: Any
    model: Any  # DDP-wrapped when world > 1
    net: Any  # the bare module
    loss_fn: Any
    optimizer: Any
    scheduler: Any
    device: Any
    amp_dtype: Any
    tflop_per_epoch: float  # training compute of one epoch over all workers
    batch_transform: Any = None  # GPU workers augment on the device (device_augment.training_data)


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker; `config[CONFIG_KEY]` is the driver's LoopConfig."""
    import ray.train

    job: LoopConfig = config[CONFIG_KEY]
    t = job.params.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray Train's worker logs every report (the whole TrainingReport) at INFO on a logger outside
    # LoggingConfig's reach, so it propagates to the root logger; our progress line says it in one.
    logging.getLogger().setLevel(logging.WARNING)
    if job.verbose:
        _print_worker_started(rank, world)
    s = _setup(job.params, Path(job.project_root), rank, world)
    history, start_epoch, run_id = _resume(s, rank, job.mlflow_run_id, t.seed)
    logger = _RankZeroMlflow(job.mlflow_tracking_uri, run_id) if rank == 0 and run_id else None
    epoch_times: list[float] = []
    for epoch in range(start_epoch, t.epochs + 1):
        t0 = time.perf_counter()
        fault = job.fault_marker if (t.fault_at_epoch == epoch and rank == world - 1) else None
        metrics = _train_and_validate(s, job.params, epoch, world, fault)
        history.append(metrics)
        epoch_times.append(time.perf_counter() - t0)
        _checkpoint_and_report(s, job, metrics, history, run_id, rank)
        if rank == 0:
            if logger is not None:
                logger.log_epoch(metrics, history)
                if train_state.SCORE_KEY in metrics:
                    logger.log_overlays(s.net, s.val_ds, s.device, epoch)
            if job.verbose:
                _print_progress(metrics, epoch, t.epochs, epoch_times)


def _setup(params: Params, root: Path, rank: int, world: int) -> _Setup:
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader, Subset

    from spd.data.dataset import SPDDataset
    from spd.data.device_augment import augment_batch, training_data
    from spd.data.packed import PackedSplit
    from spd.data.sampling import epoch_sampler
    from spd.engine import build_optimizer, build_scheduler, to_device
    from spd.flops import train_flops_per_image
    from spd.losses import SPDLoss
    from spd.model import build_model
    from spd.precision import autocast_dtype

    t = params.train
    torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    device = ray.train.torch.get_device()

    data_dir = Path(runtime.resolve_path(root, params.prepare.main.out))
    train_split, val_split = PackedSplit(data_dir / "train"), PackedSplit(data_dir / "val")
    train_ds, batch_transform = training_data(train_split, t.augment, device)
    val_ds = SPDDataset(val_split, augment=None)
    per_worker_batch = max(1, t.batch_size // world)
    sampler = epoch_sampler(len(train_ds), t.epoch_images, num_replicas=world, rank=rank, seed=t.seed)
    loading = {
        "num_workers": t.loader_workers,
        "persistent_workers": t.loader_workers > 0,
        "pin_memory": device.type == "cuda",
    }
    train_loader = DataLoader(
        train_ds, batch_size=per_worker_batch, sampler=sampler, drop_last=True, **loading
    )
    # Each val sample on exactly one worker (no padding duplicates): summed confusion matrices equal
    # a single-process evaluation of the whole split.
    val_loader = DataLoader(
        Subset(val_ds, range(rank, len(val_ds), world)), batch_size=per_worker_batch, **loading
    )

    torch.manual_seed(t.seed)  # same initial weights on every worker (DDP also broadcasts them)
    model = build_model(params.model, train_split.num_classes)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    net = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(net, t)
    scheduler = build_scheduler(optimizer, t, t.epochs * len(train_loader), len(train_loader))
    loss_fn = SPDLoss.from_config(params.model.tasks, params.loss)
    # training compute, the yardstick recipes are compared at: FLOPs of this worker's step x workers
    probe = to_device(next(iter(DataLoader(train_ds, batch_size=per_worker_batch))), device)
    if batch_transform is not None:  # widened only: the probe draws no augmentation
        probe = augment_batch(probe, None, train_split.label_set)
    images_per_epoch = len(train_loader) * per_worker_batch * world
    tflop_per_epoch = train_flops_per_image(net, loss_fn, probe) * images_per_epoch / 1e12
    return _Setup(
        train_split, val_ds, sampler, train_loader, val_loader, model, net, loss_fn, optimizer,
        scheduler, device, autocast_dtype(t.bf16, device), tflop_per_epoch, batch_transform,
    )  # fmt: skip


def _resume(s: _Setup, rank: int, run_id: str | None, seed: int) -> tuple[list[dict], int, str | None]:
    """(history, first epoch to train, MLflow run id) from the latest checkpoint, else a fresh start."""
    import ray.train
    import torch

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        train_state.seed_everything(seed + rank)
        return [], 1, run_id
    with ckpt.as_directory() as d:
        state = train_state.read_state(d)
        s.net.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        rng = Path(d) / train_state.rng_file(rank)
        if rng.is_file():
            train_state.set_rng_state(torch.load(rng, weights_only=True))
    return list(state["history"]), int(state["epoch"]) + 1, run_id or state.get("mlflow_run_id")


def _train_and_validate(
    s: _Setup, params: Params, epoch: int, world: int, fault_marker: str | None
) -> dict[str, float]:
    """One epoch on this worker's shard; metrics averaged (losses) or summed (val) over workers."""
    from spd.engine import evaluate, train_one_epoch

    t = params.train
    s.sampler.set_epoch(epoch)
    losses = train_one_epoch(
        s.model,
        s.loss_fn,
        s.optimizer,
        s.scheduler,
        s.train_loader,
        s.device,
        autocast_dtype=s.amp_dtype,
        channels_last=t.channels_last,
        on_step=_fault_hook(fault_marker, len(s.train_loader) // 2),
        batch_transform=s.batch_transform,
    )
    losses = _mean_across_workers(losses, world)
    metrics: dict[str, float] = {"epoch": epoch, "train_loss": losses["loss"]}
    for task in ("seg", "pose", "densepose"):
        if f"loss_{task}" in losses:
            metrics[f"train_loss_{task}"] = losses[f"loss_{task}"]
    metrics["lr"] = losses["lr"]
    metrics["images_per_s"] = losses["images_per_s"] * world  # mean per worker x workers
    metrics["train_tflop"] = round(epoch * s.tflop_per_epoch, 2)
    if epoch % t.val_every == 0 or epoch == t.epochs:
        _sync_buffers_from_rank0(s.net, world)
        ev = evaluate(
            s.net,
            s.val_loader,
            s.device,
            num_classes=s.train_split.num_classes,
            tasks=params.model.tasks,
            autocast_dtype=s.amp_dtype,
            channels_last=t.channels_last,
        )
        metrics.update(val_metrics(ev))
    return metrics


def _checkpoint_and_report(
    s: _Setup, job: LoopConfig, metrics: dict, history: list[dict], run_id: str | None, rank: int
) -> None:
    """Every worker saves its RNG state; rank 0 also the weights; then one `ray.train.report`."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        torch.save(train_state.get_rng_state(), Path(tmp) / train_state.rng_file(rank))
        if rank == 0:
            state = {
                "model": {k: v.detach().cpu() for k, v in s.net.state_dict().items()},
                "optimizer": s.optimizer.state_dict(),
                "scheduler": s.scheduler.state_dict(),
                "epoch": int(metrics["epoch"]),
                "history": history,
                "mlflow_run_id": run_id,
                "fingerprint": job.fingerprint,
                "num_classes": s.train_split.num_classes,
                "label_set": s.train_split.label_set,
                "image_size": int(s.train_split.manifest["image_size"]),
            }
            torch.save(state, Path(tmp) / train_state.STATE_FILE)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"epoch_{int(metrics['epoch']):04d}",
        )


def _sync_buffers_from_rank0(net: Any, world: int) -> None:
    """Give every worker rank 0's BatchNorm running stats: after the last training step each rank
    has updated them from its own batch, and the evaluated model must be the one checkpointed."""
    import torch.distributed as dist

    if world > 1 and dist.is_initialized():
        for buf in net.buffers():
            dist.broadcast(buf, src=0)


def _mean_across_workers(values: dict[str, float], world: int) -> dict[str, float]:
    """Each worker's per-epoch means averaged over all workers (equal shares of the data)."""
    import torch
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


VAL_METRIC_NAMES = {
    "miou": "val_miou",
    "pixel_acc": "val_pixel_acc",
    "mean_acc": "val_mean_acc",
    "pckh": "val_pckh",
    "dp_miou": "val_dp_miou",
    "dp_uv_error": "val_dp_uv_error",
}


def val_metrics(m: dict[str, Any]) -> dict[str, float]:
    """Library metric names -> the flat val_* keys (only those the task set produced)."""
    return {out: float(m[k]) for k, out in VAL_METRIC_NAMES.items() if k in m and m[k] is not None}


def _print_progress(metrics: dict[str, float], epoch: int, epochs: int, epoch_times: list[float]) -> None:
    eta = (sum(epoch_times) / len(epoch_times)) * (epochs - epoch)
    val = f"val mIoU {metrics['val_miou']:.4f}" if "val_miou" in metrics else "val mIoU   -   "
    _say(
        f"epoch {epoch}/{epochs}  loss {metrics['train_loss']:.4f}  {val}  "
        f"{metrics['images_per_s']:.1f} img/s  lr {metrics['lr']:.2e}  ETA {_hms(eta)}"
    )


def _print_worker_started(rank: int, world: int) -> None:
    """One line per worker (group), in place of Ray Train's INFO lines: where each rank runs, and
    when Ray replaced a group after a failure."""
    import ray

    node = ray.get_runtime_context().get_node_id()[:8]
    _say(f"worker {rank}/{world} started: pid {os.getpid()} on node {node}")


def _say(line: str) -> None:
    """One '[spd train] ...' console line from a worker, flushed at once.

    sys.stdout.write, not print: Ray Train routes print() through its logger, which echoes it twice.
    """
    sys.stdout.write(f"[spd train] {line}\n")
    sys.stdout.flush()


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _fault_hook(marker: str | None, at_step: int) -> Any:
    """A train_one_epoch on_step hook: this worker process dies at `at_step`, once per run.

    The marker file is written first, so the replacement worker group trains through that epoch.
    """
    if marker is None:
        return None

    def hook(step: int, _values: dict[str, float]) -> None:
        path = Path(marker)
        if step == at_step and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"worker pid {os.getpid()} killed by train.fault_at_epoch\n")
            _say(f"fault hook: worker pid {os.getpid()} exits mid-epoch")
            # Ray's controller registers the previous epoch's checkpoint asynchronously; a crash
            # before that resumes one checkpoint earlier (correct, but the hook is for tests, which
            # need one outcome), so give the registration time on a loaded machine.
            time.sleep(10)
            os._exit(1)

    return hook


class _RankZeroMlflow:
    """Rank 0's view of the run's MLflow run: per-epoch metrics, the history CSV, overlays."""

    def __init__(self, uri: str | None, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run_id

    def log_epoch(self, metrics: dict[str, float], history: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        step = int(metrics["epoch"])
        batch = [
            Metric(k, float(v), ts, step) for k, v in metrics.items() if k != "epoch" and math.isfinite(v)
        ]
        self.client.log_batch(self.run_id, metrics=batch)
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "train_history.csv"
            p.write_text(train_state.history_csv(history))
            self.client.log_artifact(self.run_id, str(p))

    def log_overlays(self, net: Any, val_ds: Any, device: Any, epoch: int, count: int = 4) -> None:
        self.client.log_image(
            self.run_id, overlay_grid(net, val_ds, device, count), f"overlays/epoch_{epoch:03d}.png"
        )


def overlay_grid(net: Any, dataset: Any, device: Any, count: int = 4) -> Any:
    """(H, count*W, 3) uint8: the first `count` samples with the predicted parsing blended in."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from spd.data.dataset import denormalize
    from spd.labels import palette

    n = min(count, len(dataset))
    images = torch.stack([dataset[i]["image"] for i in range(n)]).to(device)  # (n, 3, S, S)
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        logits = net(images)["seg"].float()  # (n, C, h, w)
        pred = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    net.train(was_training)
    rgb = denormalize(images).astype(np.float32)  # (n, S, S, 3)
    colours = palette()[pred.cpu().numpy()].astype(np.float32)
    blend = (0.5 * rgb + 0.5 * colours).astype(np.uint8)  # (n, S, S, 3)
    return np.concatenate(list(blend), axis=1)
