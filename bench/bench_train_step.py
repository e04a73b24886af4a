"""Training-step throughput and model FLOP/s of the SPD network, next to the machine's measured peak.

    python bench/bench_train_step.py                       # full sweep (slow on a 2-core CPU)
    python bench/bench_train_step.py --backbones resnet18 --sizes 128 --steps 3

For every (backbone, image size, precision) it times a full step (forward, SPDLoss, backward,
AdamW) on a random batch with all three tasks, counts the step's FLOPs with
torch.utils.flop_counter, and reports images/s, achieved FLOP/s and the ratio to the peak FLOP/s
measured in the same run for that precision. Writes bench/results/train_step.json.

"Peak" is the faster of two dense kernels timed in the same run: a square matmul and a large 3x3
convolution (256 -> 256 channels, 32x32, batch 16) in the step's precision and memory layout. On
some CPUs torch's fp32 matmul (BLAS) is much slower than oneDNN's fp32 convolution, so the matmul
alone is not the machine's peak and ratios against it exceed 100%; both figures are in the JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spd.config import LossConfig, ModelConfig  # noqa: E402
from spd.io import atomic_write_json  # noqa: E402
from spd.losses import SPDLoss  # noqa: E402
from spd.model import build_model  # noqa: E402

PRECISIONS = {"fp32": (None, False), "bf16": (torch.bfloat16, True)}  # (autocast dtype, channels_last)


def machine(load_before: tuple[float, ...] | None = None) -> dict:
    """What every bench records about the machine it ran on (next to its measured peak); with
    `load_before` (os.getloadavg() at the start) the load averages before and now."""
    record = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if load_before is not None:
        record["load_average_1_5_15_before"] = list(load_before)
        record["load_average_1_5_15_after"] = list(os.getloadavg())
    return record


def _calls_per_second(call: Callable[[], torch.Tensor], seconds: float) -> float:
    """Run `call` for about `seconds` after one warm-up; reading a result waits for the device."""
    call().sum().item()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = call()
        reps += 1
    out.sum().item()
    return reps / (time.perf_counter() - start)


def peak_matmul_flops(dtype: torch.dtype, device: torch.device, n: int = 2048, seconds: float = 2.0) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 * _calls_per_second(lambda: a @ b, seconds)


def peak_conv_flops(
    dtype: torch.dtype | None, channels_last: bool, device: torch.device, seconds: float = 2.0
) -> float:
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device)
    x = torch.randn(16, 256, 32, 32, device=device)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        return 2 * 16 * 256 * 256 * 9 * 32 * 32 * _calls_per_second(lambda: conv(x), seconds)


def measured_peaks(device: torch.device, seconds: float = 1.0, bf16: bool = True) -> dict[str, float]:
    """The machine's peak FLOP/s measured now (fp32 conv and matmul; bf16 channels_last conv), printed:
    what the benches record next to their figures."""
    peaks = {
        "fp32_conv": peak_conv_flops(None, False, device, seconds=seconds),
        "fp32_matmul": peak_matmul_flops(torch.float32, device, seconds=seconds),
    }
    if bf16:
        peaks["bf16_conv"] = peak_conv_flops(torch.bfloat16, True, device, seconds=seconds)
    print("measured peak: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()), flush=True)
    return peaks


def random_batch(
    batch: int, size: int, num_classes: int, device: torch.device, generator: bool = True
) -> dict:
    g = torch.Generator().manual_seed(0) if generator else None
    kp = torch.rand(batch, 16, 3, generator=g) * size
    kp[..., 2] = 1
    b = {
        "image": torch.randn(batch, 3, size, size, generator=g),
        "parsing": torch.randint(0, num_classes, (batch, size, size), generator=g),
        "dp_index": torch.randint(0, 25, (batch, size, size), generator=g),
        "dp_uv": torch.rand(batch, 2, size, size, generator=g),
        "keypoints": kp,
        "has_pose": torch.ones(batch, dtype=torch.bool),
        "has_iuv": torch.ones(batch, dtype=torch.bool),
        "uv_valid": torch.ones(batch, dtype=torch.bool),
    }
    return {k: v.to(device) for k, v in b.items()}


def count_step_flops(backbone: str, size: int, batch: int) -> int:
    """FLOPs of one training step (forward + loss + backward), counted on the meta device: no
    memory, no time, so the full sweep's FLOPs are known even where timing it is too slow."""
    with torch.device("meta"):
        model = build_model(ModelConfig(backbone=backbone), num_classes=20).train()
        b = random_batch(batch, size, 20, torch.device("meta"), generator=False)
        with FlopCounterMode(display=False) as counter:
            loss, _ = SPDLoss(model.tasks, LossConfig())(model(b["image"]), b)
            loss.backward()
    return counter.get_total_flops()


def bench_one(
    backbone: str, size: int, precision: str, args: argparse.Namespace, device: torch.device
) -> dict:
    torch.manual_seed(0)
    dtype, channels_last = PRECISIONS[precision]
    model = build_model(ModelConfig(backbone=backbone), num_classes=20).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = SPDLoss(model.tasks, LossConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = random_batch(args.batch, size, 20, device)
    x = batch["image"].contiguous(memory_format=torch.channels_last) if channels_last else batch["image"]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
        loss, _ = criterion(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()  # doubles as the first warm-up step
    flops = counter.get_total_flops()
    for _ in range(args.warmup - 1):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = (time.perf_counter() - start) / args.steps
    return {
        "backbone": backbone,
        "image_size": size,
        "precision": precision,
        "channels_last": channels_last,
        "batch": args.batch,
        "step_s": elapsed,
        "images_per_s": args.batch / elapsed,
        "step_flops": flops,
        "flops_per_image": flops / args.batch,
        "achieved_flop_per_s": flops / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="resnet18,resnet50,resnet101")
    ap.add_argument("--sizes", default="128,384", help="image sizes (default profile 128, paper 384)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench/results/train_step.json")
    ap.add_argument("--count-only", action="store_true", help="only count FLOPs (meta device), no timing")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precisions = args.precisions.split(",")
    if args.count_only:
        counts = []
        for bb in args.backbones.split(","):
            for sz in (int(s) for s in args.sizes.split(",")):
                flops = count_step_flops(bb, sz, args.batch)
                counts.append({"backbone": bb, "image_size": sz, "step_flops": flops, "batch": args.batch})
                counts[-1]["flops_per_image"] = flops / args.batch
        for c in counts:
            print(
                f"{c['backbone']:10s} {c['image_size']:4d}px {c['flops_per_image'] / 1e9:8.1f} GFLOP/img/step"
            )
        atomic_write_json(args.out, {"results": counts, "note": "training-step FLOPs only (meta device)"})
        return 0
    # same run, same machine state as the steps
    matmul_peaks = {p: peak_matmul_flops(PRECISIONS[p][0] or torch.float32, device) for p in precisions}
    conv_peaks = {p: peak_conv_flops(*PRECISIONS[p], device) for p in precisions}
    peaks = {p: max(matmul_peaks[p], conv_peaks[p]) for p in precisions}
    for p in precisions:
        print(f"peak {p}: matmul {matmul_peaks[p] / 1e9:.1f} GFLOP/s, conv {conv_peaks[p] / 1e9:.1f} GFLOP/s")
    results = []
    for bb in args.backbones.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for p in precisions:
                r = bench_one(bb, size, p, args, device)
                r["peak_matmul_flop_per_s"] = matmul_peaks[p]
                r["peak_conv_flop_per_s"] = conv_peaks[p]
                r["peak_flop_per_s"] = peaks[p]
                r["efficiency"] = r["achieved_flop_per_s"] / peaks[p]
                results.append(r)
                print(
                    f"{bb:10s} {size:4d}px {p:5s} {r['images_per_s']:8.2f} img/s "
                    f"{r['achieved_flop_per_s'] / 1e9:8.1f} GFLOP/s ({r['efficiency']:.1%} of peak "
                    f"{peaks[p] / 1e9:.1f})",
                    flush=True,
                )
    report = {
        "machine": {**machine(), "device": str(device)},
        "peak_matmul_flop_per_s": matmul_peaks,
        "peak_conv_flop_per_s": conv_peaks,
        "peak_flop_per_s": peaks,
        "results": results,
        "note": "FLOPs counted by torch.utils.flop_counter for forward + backward of one step",
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
