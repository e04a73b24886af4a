"""The paper profile's training step on one device: images/s and model FLOP/s vs the bf16 peak.

ResNet-101 SPD at output stride 8 and 384 px (params-paper.yaml), bf16 autocast, channels_last,
AdamW, synthetic batches generated in memory on the device (no data loading in the measurement).
FLOPs per step (forward + backward) are counted once with torch.utils.flop_counter; the achieved
FLOP/s is compared with the GPU's datasheet dense bf16 peak and with a measured bf16 matmul peak.

    python bench/gpu_paper_profile.py                       # on a GPU: 300 steps, batch 8
    python bench/gpu_paper_profile.py --device cpu --steps 3 --warmup 1 --batch 2 \\
        --image-size 64 --backbone resnet18 --head-channels 32   # CPU smoke run

Writes bench/results/gpu_paper_profile[_<tag>].json.
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
from spd.labels import NUM_DP_PARTS  # noqa: E402
from spd.losses import SPDLoss  # noqa: E402
from spd.model import build_model  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params-paper.yaml"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="per-device batch (the paper profile: 8 per GPU)")
    ap.add_argument("--image-size", type=int, default=None, help="default: prepare.image_size (384)")
    ap.add_argument("--backbone", default=None, help="default: model.backbone (resnet101)")
    ap.add_argument("--head-channels", type=int, default=None)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (CPU runs)")
    ap.add_argument("--tag", default=None, help="suffix of the result file name")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = load_params(args.params)
    cfg = replace(params.model, pretrained=None)  # weights do not change the speed; nothing to read
    if args.backbone:
        cfg = replace(cfg, backbone=args.backbone)
    if args.head_channels:
        cfg = replace(cfg, head_channels=args.head_channels)
    size = args.image_size or params.prepare.image_size
    num_classes = 20
    bf16 = not args.no_bf16
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    model = build_model(cfg, num_classes).to(device).to(memory_format=torch.channels_last)
    criterion = SPDLoss.from_config(cfg.tasks, params.loss)
    optimizer = build_optimizer(model, replace(params.train, optimizer="adamw"))
    batch = synthetic_batch(args.batch, size, num_classes, device)
    x = batch["image"].contiguous(memory_format=torch.channels_last)

    def step() -> torch.Tensor:
        with amp:
            out = model(x)
        loss, _ = criterion(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    from torch.utils.flop_counter import FlopCounterMode

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
    loss_value = float(loss)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak_sheet = datasheet_peak(name) if device.type == "cuda" else None
    mm_n, mm_iters = (8192, 50) if device.type == "cuda" else (1024, 5)
    peak_measured = measured_matmul_peak(device, mm_n, mm_iters)
    achieved = flops_per_step * args.steps / elapsed
    result = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "backbone": cfg.backbone,
        "output_stride": cfg.output_stride,
        "head_channels": cfg.head_channels,
        "tasks": list(cfg.tasks),
        "image_size": size,
        "batch": args.batch,
        "bf16": bf16,
        "channels_last": True,
        "steps": args.steps,
        "seconds": round(elapsed, 3),
        "images_per_s": round(args.batch * args.steps / elapsed, 2),
        "step_ms": round(1000 * elapsed / args.steps, 2),
        "model_gflop_per_step": round(flops_per_step / 1e9, 2),
        "achieved_tflop_s": round(achieved / 1e12, 4),
        "bf16_peak_datasheet_tflop_s": peak_sheet and round(peak_sheet / 1e12, 1),
        "mfu_vs_datasheet": peak_sheet and round(achieved / peak_sheet, 4),
        "bf16_matmul_measured_tflop_s": round(peak_measured / 1e12, 4),
        "fraction_of_measured_matmul": round(achieved / peak_measured, 4),
        "final_loss": round(loss_value, 4),
        "max_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
    }
    out = ROOT / "bench" / "results" / f"gpu_paper_profile{'_' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
