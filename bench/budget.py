"""Train a segmentation model to a fixed training compute (TFLOP), number of epochs or optimizer
steps with the library's own loop, and record val mIoU along the way: the yardstick shared by
bench_learning, bench_peer and bench_sides.

Compute is forward + backward FLOPs per image (`spd.flops.train_flops_per_image`) x images seen,
so two recipes or two models are compared at the same work, whatever the machine's speed.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.config import Params
from spd.config import TrainConfig
from spd.data.dataset import SPDDataset
from spd.data.packed import PackedSplit
from spd.engine import build_optimizer, build_scheduler, evaluate, train_one_epoch
from spd.flops import train_flops_per_image
from spd.losses import SPDLoss
from spd.model import build_model
from spd.precision import autocast_dtype

ROOT = Path(__file__).resolve().parent.parent
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


def read_result(path: str | Path) -> dict:
    """An earlier bench output (to merge or resume); a missing or broken file ends the bench with
    its name, not a traceback."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"{Path(sys.argv[0]).name}: cannot read {path}: {e}")


@dataclass(frozen=True)
class Budget:
    """How long a model trains: exactly one of training compute, epochs or optimizer steps."""

    tflop: float | None = None
    epochs: float | None = None
    steps: int | None = None

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.tflop, self.epochs, self.steps)) != 1:
            raise ValueError(f"a budget is one of tflop, epochs or steps, got {self!r}")

    def __str__(self) -> str:
        if self.tflop is not None:
            return f"{self.tflop:g} TFLOP"
        return f"{self.epochs:g} epochs" if self.epochs is not None else f"{self.steps} steps"

    def steps_for(self, flops_per_image: float, batch_size: int, train_images: int) -> int:
        """Optimizer steps this budget buys (at least one)."""
        if self.steps is not None:
            return max(1, self.steps)
        images = self.tflop * 1e12 / flops_per_image if self.tflop is not None else self.epochs * train_images
        return max(1, int(images / batch_size))


@dataclass(frozen=True)
class Data:
    """The prepared data every bench trains and scores on: params' `prepare.main.out`."""

    train: SPDDataset
    val: SPDDataset
    num_classes: int
    label_set: str

    @classmethod
    def of(cls, params: Params) -> Data:
        root = ROOT / params.prepare.main.out
        train, val = PackedSplit(root / "train"), PackedSplit(root / "val")
        return cls(
            SPDDataset(train, augment=params.train.augment),
            SPDDataset(val),
            train.num_classes,
            train.label_set,
        )


def spd_model(params: Params, data: Data) -> tuple[nn.Module, nn.Module]:
    """SPD and its loss as params describe them, initialised from `train.seed`."""
    torch.manual_seed(params.train.seed)
    return build_model(params.model, data.num_classes), SPDLoss.from_config(params.model.tasks, params.loss)


def train_spd(params: Params, budget: Budget, **kwargs) -> dict:
    """`train_to_budget` for SPD as params describe it (model, tasks, loss, train, seed)."""
    data = Data.of(params)
    model, criterion = spd_model(params, data)
    return train_to_budget(model, criterion, data, params.train, budget, tasks=params.model.tasks, **kwargs)


def _loader(train_ds: Dataset, cfg: TrainConfig, loader_workers: int) -> DataLoader:
    return DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.seed),
        num_workers=loader_workers,
        persistent_workers=loader_workers > 0,
    )


def _batches(loader: DataLoader, steps: int) -> Iterator[dict]:
    """`steps` batches, cycling through the loader's epochs (each epoch reshuffled)."""
    done = 0
    while done < steps:
        for batch in loader:
            if done == steps:
                return
            done += 1
            yield batch


def images_per_second(
    model: nn.Module,
    criterion: nn.Module,
    data: Data,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    steps: int = 6,
) -> float:
    """Training throughput (steps on pre-loaded batches: data loading, the same for every model, is
    left out) from a short probe on a copy; the model is untouched."""
    device = torch.device(device)
    probe = copy.deepcopy(model).to(memory_format=torch.channels_last).to(device)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    batches = list(_batches(_loader(data.train, cfg, 0), steps + 1))
    amp = autocast_dtype("auto", device)
    train_one_epoch(probe, criterion, opt, None, batches[:1], device, autocast_dtype=amp, channels_last=True)
    _synchronize(device)
    start = time.perf_counter()
    train_one_epoch(probe, criterion, opt, None, batches[1:], device, autocast_dtype=amp, channels_last=True)
    _synchronize(device)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_to_budget(
    model: nn.Module,
    criterion: nn.Module,
    data: Data,
    cfg: TrainConfig,
    budget: Budget,
    *,
    tasks: tuple[str, ...] = ("seg",),
    evals: int = 4,
    device: torch.device | str = "cpu",
    loader_workers: int = 0,
) -> dict:
    """Train `model` with `cfg`'s optimizer and schedule until `budget`; evaluate `evals` times.

    Returns {gflop_per_image, steps, images, epochs, curve: [{tflop, wall_s, val_miou}], final
    metrics of `spd.engine.evaluate`, label_set}. The lr schedule ends exactly at the budget. bf16
    autocast where `device` computes it natively (params' `bf16: auto`).
    """
    device = torch.device(device)
    amp = autocast_dtype("auto", device)
    loader = _loader(data.train, cfg, loader_workers)
    model = model.to(memory_format=torch.channels_last)
    fpi = train_flops_per_image(model, criterion, next(iter(loader)))
    model = model.to(device)
    steps = budget.steps_for(fpi, cfg.batch_size, len(data.train))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps, len(loader))
    val_loader = DataLoader(data.val, batch_size=16)
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
            num_classes=data.num_classes,
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
        "epochs": steps * cfg.batch_size / len(data.train),
        "curve": curve,
        "final": metrics,
        "label_set": data.label_set,
    }
