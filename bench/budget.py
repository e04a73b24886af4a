"""Train a segmentation model to a fixed training compute (TFLOP) or wall time, with the library's
own loop, and record val mIoU along the way: the yardstick shared by bench_learning and bench_peer.

Compute is forward + backward FLOPs per image (`spd.flops.train_flops_per_image`) x images seen,
so two recipes or two models are compared at the same work, whatever the machine's speed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from spd.config import TrainConfig
from spd.engine import build_optimizer, build_scheduler, evaluate, train_one_epoch
from spd.flops import train_flops_per_image
from spd.precision import autocast_dtype

AMP = autocast_dtype("auto", "cpu")  # bf16 where the CPU computes it natively, else fp32


def measured_peak(device: torch.device | str = "cpu") -> float:
    """The machine's peak FLOP/s at the training precision, timed now and printed: on the CPU the
    faster of a matmul and a large conv (bench_train_step's kernels); on a GPU a bf16 matmul."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_matmul_peak(device)
    from bench_train_step import peak_conv_flops, peak_matmul_flops

    dtype = AMP or torch.float32
    peak = max(peak_matmul_flops(dtype, device), peak_conv_flops(AMP, AMP is not None, device))
    print(f"measured {'bf16' if AMP else 'fp32'} peak {peak / 1e9:.0f} GFLOP/s", flush=True)
    return peak


def _cuda_matmul_peak(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    peak = 2 * n**3 * reps / (time.perf_counter() - start)
    print(f"measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s on {torch.cuda.get_device_name(device)}")
    return peak


def machine_record(threads: int, peak: float, device: torch.device | str = "cpu") -> dict:
    """What every result of these benches is stored next to: the machine, precision and its peak."""
    import platform

    device = torch.device(device)
    amp = autocast_dtype("auto", device)
    record = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads},
        "precision": "bf16" if amp else "fp32",
        "peak_gflops": round(peak / 1e9, 1),
    }
    if device.type == "cuda":
        record["machine"]["gpu"] = torch.cuda.get_device_name(device)
    return record


@dataclass(frozen=True)
class Budget:
    tflop: float | None = None  # stop after this much training compute ...
    wall_s: float | None = None  # ... or after about this long (steps estimated from a timed probe)


def _batches(loader: DataLoader, steps: int) -> Iterator[dict]:
    """`steps` batches, cycling through the loader's epochs (each epoch reshuffled)."""
    done = 0
    while done < steps:
        for batch in loader:
            if done == steps:
                return
            done += 1
            yield batch


def _images_per_second(
    model: nn.Module, criterion: nn.Module, loader: DataLoader, device: torch.device, steps: int = 6
) -> float:
    """Training throughput from a short probe on a copy (the trained model is untouched)."""
    import copy

    probe = copy.deepcopy(model)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    batches = list(_batches(loader, steps + 1))
    amp = autocast_dtype("auto", device)
    train_one_epoch(probe, criterion, opt, None, batches[:1], device, autocast_dtype=amp, channels_last=True)
    _synchronize(device)
    start = time.perf_counter()
    train_one_epoch(probe, criterion, opt, None, batches[1:], device, autocast_dtype=amp, channels_last=True)
    _synchronize(device)
    return steps * loader.batch_size / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_to_budget(
    model: nn.Module,
    criterion: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset,
    cfg: TrainConfig,
    budget: Budget,
    *,
    num_classes: int,
    tasks: tuple[str, ...] = ("seg",),
    evals: int = 4,
    device: torch.device | str = "cpu",
    loader_workers: int = 0,
) -> dict:
    """Train `model` with `cfg`'s optimizer and schedule until `budget`; evaluate `evals` times.

    Returns {gflop_per_image, steps, images, epochs, curve: [{tflop, wall_s, val_miou}], final
    metrics of `spd.engine.evaluate`}. The lr schedule ends exactly at the budget. bf16 autocast
    where `device` computes it natively (params' `bf16: auto`).
    """
    device = torch.device(device)
    amp = autocast_dtype("auto", device)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=g,
        num_workers=loader_workers,
        persistent_workers=loader_workers > 0,
    )
    model = model.to(memory_format=torch.channels_last)
    fpi = train_flops_per_image(model, criterion, next(iter(loader)))
    model = model.to(device)
    if budget.tflop is not None:
        steps = max(1, int(budget.tflop * 1e12 / (fpi * cfg.batch_size)))
    else:
        steps = max(
            1, int(budget.wall_s * _images_per_second(model, criterion, loader, device) / cfg.batch_size)
        )
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps, len(loader))
    val_loader = DataLoader(val_ds, batch_size=16)
    marks = sorted({max(1, steps * (i + 1) // evals) for i in range(evals)})
    batches, curve, done, train_s = _batches(loader, steps), [], 0, 0.0
    for mark in marks:
        start = time.perf_counter()
        chunk = (next(batches) for _ in range(mark - done))
        train_one_epoch(
            model, criterion, optimizer, scheduler, chunk, device, autocast_dtype=amp, channels_last=True
        )
        _synchronize(device)
        train_s += time.perf_counter() - start
        done = mark
        metrics = evaluate(
            model,
            val_loader,
            device,
            num_classes=num_classes,
            tasks=tasks,
            autocast_dtype=amp,
            channels_last=True,
        )
        tflop = done * cfg.batch_size * fpi / 1e12
        curve.append({"tflop": round(tflop, 2), "wall_s": round(train_s, 1), "val_miou": metrics["miou"]})
        print(f"    {tflop:7.1f} TFLOP  {train_s:6.0f} s  val mIoU {metrics['miou']:.4f}", flush=True)
    return {
        "gflop_per_image": fpi / 1e9,
        "steps": steps,
        "images": steps * cfg.batch_size,
        "epochs": steps * cfg.batch_size / len(train_ds),
        "curve": curve,
        "final": metrics,
    }
