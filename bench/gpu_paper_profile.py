"""The paper profile's training step on one device: images/s and model FLOP/s vs the bf16 peak.

ResNet-101 SPD at output stride 8 and 384 px (params-paper.yaml), bf16 autocast, channels_last,
AdamW, synthetic batches generated in memory on the device (no data loading in the measurement).
FLOPs per step (forward + backward) are counted once with torch.utils.flop_counter; the achieved
FLOP/s is compared with the GPU's datasheet dense bf16 peak and with a measured bf16 matmul peak.
Several task sets run in one call (--tasks), e.g. with and without the pose head; --profile-steps
adds each one's costliest kernels (torch.profiler, device time); augment_batch_images_per_s is what
the device-side augmentation (spd.data.device_augment, after the CompactDataset loader) sustains.

    # the GPU session (issue 16): ~1.5 min of an H100/H200
    python bench/gpu_paper_profile.py --tasks seg+pose+densepose,seg+densepose,seg --steps 100 \
        --warmup 10 --profile-steps 3 --tag issue16
    python bench/gpu_paper_profile.py --smoke      # CPU check of the script (tiny model, fp32)

Writes bench/results/gpu_paper_profile[_<tag>].json: device, torch, command, image_size, batch,
bf16_peak_datasheet_tflop_s, bf16_matmul_measured_tflop_s, augment_batch_images_per_s and per task
set (task_sets.<a+b+c>): images_per_s, step_ms, model_gflop_per_step, achieved_tflop_s,
mfu_vs_datasheet (fraction of the datasheet peak), fraction_of_measured_matmul, max_memory_gib,
final_loss, top_kernels (with --profile-steps).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_params  # noqa: E402
from spd.config import replace  # noqa: E402
from spd.engine import build_optimizer  # noqa: E402
from spd.io import atomic_write_json  # noqa: E402
from spd.labels import NUM_DP_PARTS  # noqa: E402
from spd.losses import SPDLoss  # noqa: E402
from spd.model import build_model  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s.
NUM_CLASSES = 20  # LIP
BF16_PEAK = {
    "H200": 989.4e12,
    "H100 SXM": 989.4e12,
    "H100 NVL": 835.5e12,
    "H100 PCIe": 756.5e12,
    "H100": 989.4e12,
    "A100": 312e12,
    "L40S": 362.05e12,
    "L4": 121e12,
    "A10G": 70e12,
}


def datasheet_peak(name: str) -> float | None:
    for key, peak in BF16_PEAK.items():  # most specific names first
        if key in name:
            return peak
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured_matmul_peak(device: torch.device, n: int, iters: int) -> float:
    """FLOP/s of a square bf16 matmul: what this device reaches on the friendliest workload."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t0)


def synthetic_batch(b: int, size: int, num_classes: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A labelled batch in SPDDataset's collated format, generated on the device."""
    g = torch.Generator(device=device).manual_seed(0)
    kp = torch.rand(b, 16, 3, device=device, generator=g) * size
    kp[..., 2] = 1.0
    return {
        "image": torch.randn(b, 3, size, size, device=device, generator=g),
        "parsing": torch.randint(0, num_classes, (b, size, size), device=device, generator=g),
        "dp_index": torch.randint(0, NUM_DP_PARTS + 1, (b, size, size), device=device, generator=g),
        "dp_uv": torch.rand(b, 2, size, size, device=device, generator=g),
        "keypoints": kp,
        "has_pose": torch.ones(b, dtype=torch.bool, device=device),
        "has_iuv": torch.ones(b, dtype=torch.bool, device=device),
        "uv_valid": torch.ones(b, dtype=torch.bool, device=device),
    }


SMOKE = {"device": "cpu", "steps": 2, "warmup": 1, "batch": 2, "image_size": 64, "backbone": "resnet18",
         "head_channels": 32, "augment_iters": 2, "threads": 2, "no_bf16": True}  # fmt: skip


def build_step(tasks: tuple[str, ...], params, args: argparse.Namespace, device: torch.device):  # noqa: ANN001, ANN201
    """(step function, model config) of the paper profile's training step for `tasks`."""
    cfg = replace(params.model, pretrained=None, tasks=tasks)  # weights do not change the speed
    if args.backbone:
        cfg = replace(cfg, backbone=args.backbone)
    if args.head_channels:
        cfg = replace(cfg, head_channels=args.head_channels)
    size = args.image_size or params.prepare.image_size
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=not args.no_bf16)
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES).to(device).to(memory_format=torch.channels_last)
    criterion = SPDLoss.from_config(cfg.tasks, params.loss)
    optimizer = build_optimizer(model, replace(params.train, optimizer="adamw"))
    batch = synthetic_batch(args.batch, size, NUM_CLASSES, device)
    x = batch["image"].contiguous(memory_format=torch.channels_last)

    def step() -> torch.Tensor:
        with amp:
            out = model(x)
        loss, _ = criterion(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step, cfg


def top_kernels(step, device: torch.device, steps: int, n: int = 25) -> list[dict]:  # noqa: ANN001
    """The n costliest ops / kernels of `steps` steps under torch.profiler, ms per step
    (device time on a GPU, self CPU time on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: -getattr(e, attr))[:n]
    return [{"op": e.key, "ms_per_step": round(getattr(e, attr) / 1e3 / steps, 3), "calls": e.count // steps}
            for e in rows]  # fmt: skip


def augment_rate(args: argparse.Namespace, size: int, device: torch.device) -> float:
    """Images/s of `spd.data.device_augment.augment_batch` (the paper's flip / scale / rotation and
    the widening to the training contract) on a uint8 batch already on `device`."""
    from spd.config import AugmentConfig
    from spd.data.device_augment import augment_batch

    b = args.batch
    batch = {
        "image": torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, device=device),
        "parsing": torch.randint(0, NUM_CLASSES, (b, size, size), dtype=torch.uint8, device=device),
        "iuv": torch.randint(0, 25, (b, size, size, 3), dtype=torch.uint8, device=device),
        "keypoints": torch.rand(b, 16, 3, device=device) * size,
        "has_pose": torch.ones(b, dtype=torch.bool, device=device),
        "has_iuv": torch.ones(b, dtype=torch.bool, device=device),
        "index": torch.arange(b, device=device),
    }
    augment_batch(batch, AugmentConfig())
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.augment_iters):
        augment_batch(batch, AugmentConfig())
    sync(device)
    return b * args.augment_iters / (time.perf_counter() - t0)


def measure(tasks: tuple[str, ...], params, args: argparse.Namespace, device: torch.device) -> dict:  # noqa: ANN001
    """images/s, FLOP/s and memory of the training step for one task set."""
    from torch.utils.flop_counter import FlopCounterMode

    step, cfg = build_step(tasks, params, args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with FlopCounterMode(display=False) as counter:  # one step, forward + backward
        step()
    flops_per_step = counter.get_total_flops()
    for _ in range(args.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync(device)
    elapsed = time.perf_counter() - t0
    result = {
        "backbone": cfg.backbone,
        "output_stride": cfg.output_stride,
        "head_channels": cfg.head_channels,
        "tasks": list(cfg.tasks),
        "steps": args.steps,
        "seconds": round(elapsed, 3),
        "images_per_s": round(args.batch * args.steps / elapsed, 2),
        "step_ms": round(1000 * elapsed / args.steps, 2),
        "model_gflop_per_step": round(flops_per_step / 1e9, 2),
        "achieved_tflop_s": round(flops_per_step * args.steps / elapsed / 1e12, 4),
        "final_loss": round(float(loss), 4),
        "max_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
    }
    if args.profile_steps:
        result["top_kernels"] = top_kernels(step, device, args.profile_steps)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params-paper.yaml"))
    ap.add_argument("--tasks", default=None, help="task sets, e.g. seg+pose+densepose,seg+densepose "
                    "(default: the params file's model.tasks)")  # fmt: skip
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="per-device batch (the paper profile: 8 per GPU)")
    ap.add_argument("--image-size", type=int, default=None, help="default: prepare.image_size (384)")
    ap.add_argument("--backbone", default=None, help="default: model.backbone (resnet101)")
    ap.add_argument("--head-channels", type=int, default=None)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--profile-steps", type=int, default=0, help="also list the top kernels of N steps")
    ap.add_argument(
        "--augment-iters", type=int, default=50, help="batches to time augment_batch on (0: skip)"
    )
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (CPU runs)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script: " + str(SMOKE))
    ap.add_argument("--tag", default=None, help="suffix of the result file name")
    if ap.parse_args(argv).smoke:  # the smoke settings are defaults: flags given still win
        ap.set_defaults(**SMOKE)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = load_params(args.params)
    size = args.image_size or params.prepare.image_size
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sets = [tuple(t.split("+")) for t in args.tasks.split(",")] if args.tasks else [tuple(params.model.tasks)]
    runs = {"+".join(t): measure(t, params, args, device) for t in sets}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak_sheet = datasheet_peak(name) if device.type == "cuda" else None
    mm_n, mm_iters = (8192, 50) if device.type == "cuda" else (1024, 5)
    peak_measured = measured_matmul_peak(device, mm_n, mm_iters)
    for r in runs.values():
        achieved = r["achieved_tflop_s"] * 1e12
        r["mfu_vs_datasheet"] = peak_sheet and round(achieved / peak_sheet, 4)
        r["fraction_of_measured_matmul"] = round(achieved / peak_measured, 4)
    result = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "command": " ".join(["python", *sys.argv]),
        "image_size": size,
        "batch": args.batch,
        "bf16": not args.no_bf16,
        "channels_last": True,
        "optimizer": "AdamW (torch default implementation for the device)",
        "bf16_peak_datasheet_tflop_s": peak_sheet and round(peak_sheet / 1e12, 1),
        "bf16_matmul_measured_tflop_s": round(peak_measured / 1e12, 4),
        "task_sets": runs,
        "augment_batch_images_per_s": round(augment_rate(args, size, device), 1)
        if args.augment_iters
        else None,
    }
    out = ROOT / "bench" / "results" / f"gpu_paper_profile{'_' + args.tag if args.tag else ''}.json"
    atomic_write_json(out, result)
    print(json.dumps(result, indent=2))
    for t, r in runs.items():
        print(f"{t}: {r['images_per_s']} images/s, {r['achieved_tflop_s']} TFLOP/s, "
              f"{r['mfu_vs_datasheet']} of the datasheet bf16 peak")  # fmt: skip
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
