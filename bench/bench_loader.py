"""Training data path per CPU core at the paper's 384 px: the packed loaders against an SCHP-style one.

    python bench/bench_loader.py                    # 64 synthetic people at 384 px, 3 rounds
    python bench/bench_loader.py --images 32 --seconds 3 --rounds 2   # quicker

Generates the data in a temporary directory with the project's synthetic generator (LIP layout:
JPEG images, PNG parsing and IUV labels, pose CSV; longest side = --size, so nothing is resized
down) and packs it with `spd prepare`'s code at --size. Then, on ONE pinned core, in-process
(DataLoader num_workers=0: the loader's whole cost is this process's CPU time; --workers 1 puts it
in one worker process instead and times the wall clock), batches of --batch with the paper's
augmentation (flip, scale 0.8-1.2, rotation +-15 degrees) are drawn in interleaved rounds from:

- schp: the SCHP reference (its LIP dataset): per sample cv2.imread of the JPEG and the parsing PNG,
  left/right swap on a flip, one affine warp each from the original image to S x S, torchvision
  ToTensor + Normalize on the image, the label as a uint8 tensor.
- schp_iuv: the same plus the IUV PNG decoded and warped (what a per-sample loader must also do for
  SPD's DensePose labels).
- packed_per_sample: SPDDataset over the packed arrays, augmentation on the CPU per sample
  (packed_per_sample_before: the same at --baseline-rev, before issue 16's changes).
- packed_compact: CompactDataset (uint8 rows copied, nothing else); its augmentation runs on the
  training device (`device_augment.augment_batch`), costed separately as device_augment_cpu: what
  that batch augmentation takes on this CPU (a GPU's figure comes from gpu_paper_profile.py).

Figures: images per CPU-second of one core (median and range over rounds). Writes
bench/results/loader.json with the machine's measured peak, versions, load and the command.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_inference import baseline_module  # noqa: E402
from bench_train_step import machine, measured_peaks  # noqa: E402

from spd.config import AugmentConfig, SourceConfig  # noqa: E402
from spd.data.dataset import MEAN, STD, SPDDataset  # noqa: E402
from spd.data.device_augment import CompactDataset, augment_batch  # noqa: E402
from spd.data.prepare import prepare_sources  # noqa: E402
from spd.data.synth import write_dataset  # noqa: E402
from spd.io import atomic_write_json  # noqa: E402
from spd.labels import IGNORE, flip_lut  # noqa: E402

BASELINE_REV = "10a196f"  # main before issue 16: SPDDataset's per-sample path as it was


class SchpStyleDataset(Dataset):
    """SCHP's per-sample loader (datasets/datasets.py, LIPDataSet) on the raw LIP-layout files: decode,
    flip with left/right swap, one affine warp per array to size x size, ToTensor + Normalize."""

    def __init__(self, root: Path, size: int, augment: AugmentConfig, with_iuv: bool) -> None:
        from torchvision import transforms

        ids = (root / "TrainVal_images" / "train_id.txt").read_text().split()
        self.images = [root / "TrainVal_images" / "train_images" / f"{i}.jpg" for i in ids]
        self.labels = [
            root / "TrainVal_parsing_annotations" / "train_segmentations" / f"{i}.png" for i in ids
        ]
        self.iuv = [root / "TrainVal_iuv_annotations" / "train_iuv" / f"{i}.png" for i in ids]
        self.size, self.augment, self.with_iuv = size, augment, with_iuv
        self.swap = flip_lut("lip")
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = cv2.imread(str(self.images[index]), cv2.IMREAD_COLOR)  # (h, w, 3) BGR, as SCHP
        label = cv2.imread(str(self.labels[index]), cv2.IMREAD_GRAYSCALE)  # (h, w)
        iuv = cv2.imread(str(self.iuv[index]), cv2.IMREAD_COLOR) if self.with_iuv else None
        h, w = label.shape
        aug, r = self.augment, torch.rand(3).tolist()
        if aug.flip and r[0] < 0.5:
            image, label = image[:, ::-1], cv2.LUT(np.ascontiguousarray(label[:, ::-1]), self.swap)
            iuv = None if iuv is None else iuv[:, ::-1]  # (the reference skips the part swap)
        scale = self.size / max(h, w) * (aug.scale_min + (aug.scale_max - aug.scale_min) * r[1])
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), (2 * r[2] - 1) * aug.rotate_deg, scale)
        m[:, 2] += ((self.size - 1) / 2 - (w - 1) / 2, (self.size - 1) / 2 - (h - 1) / 2)
        dsize = (self.size, self.size)

        def warp(a: np.ndarray, flags: int, border: tuple | int) -> np.ndarray:
            return cv2.warpAffine(np.ascontiguousarray(a), m, dsize, flags=flags, borderValue=border)

        item = {
            "image": self.transform(warp(image, cv2.INTER_LINEAR, (0, 0, 0))),
            "parsing": torch.from_numpy(warp(label, cv2.INTER_NEAREST, IGNORE)),
        }
        if iuv is not None:
            item["iuv"] = torch.from_numpy(warp(iuv, cv2.INTER_NEAREST, (IGNORE, 0, 0)))
        return item


def make_data(tmp: Path, images: int, size: int) -> tuple[Path, Path]:
    """Synthetic people in the LIP layout at `size` (longest side) and their packed arrays."""
    raw, packed = tmp / "raw", tmp / "packed"
    write_dataset(raw, seed=0, train=images, val=2, image_size=size)
    prepare_sources([SourceConfig(source="synthetic", root=str(raw), out=str(packed))], size, progress=False)
    return raw, packed / "train"


def time_batches(batches: Iterator[dict], consume: Callable[[dict], object], seconds: float) -> dict:
    """Draw and `consume` batches for about `seconds` (at least 2): how many, and the CPU seconds of
    this process (all its threads; process_time, not the 10 ms ticks of os.times) and wall seconds."""
    n, cpu, wall = 0, time.process_time(), time.perf_counter()
    while n < 2 or time.perf_counter() - wall < seconds:
        consume(next(batches))
        n += 1
    return {"batches": n, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


def _endless(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def loaders(raw: Path, packed: Path, args: argparse.Namespace) -> dict[str, tuple[Dataset, Callable]]:
    """name -> (dataset, what is done with each collated batch in the same process)."""
    aug = AugmentConfig()  # the paper's: flip, scale 0.8-1.2, rotation +-15
    baseline = baseline_module(args.baseline_rev, "spd/data/dataset.py")
    nothing: Callable = lambda batch: None  # noqa: E731
    return {
        "schp": (SchpStyleDataset(raw, args.size, aug, with_iuv=False), nothing),
        "schp_iuv": (SchpStyleDataset(raw, args.size, aug, with_iuv=True), nothing),
        "packed_per_sample_before": (baseline.SPDDataset(packed, aug), nothing),
        "packed_per_sample": (SPDDataset(packed, aug), nothing),
        "packed_compact": (CompactDataset(packed), nothing),
        "device_augment_cpu": (CompactDataset(packed), lambda batch: augment_batch(batch, aug)),
    }


def measure(raw: Path, packed: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Interleaved rounds; per loader images per CPU-second (in-process) or per wall second (worker)."""
    cases = loaders(raw, packed, args)
    iters = {}
    for name, (ds, _) in cases.items():
        g = torch.Generator().manual_seed(0)
        kw = {"num_workers": args.workers, "persistent_workers": args.workers > 0}
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True, generator=g, **kw)
        iters[name] = _endless(loader)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, (_, consume) in cases.items():
            batches = iters[name]
            if name == "device_augment_cpu":  # the batch transform alone (loading is timed above)
                batches = itertools.cycle([next(iters[name]) for _ in range(2)])
            time_batches(batches, consume, 0.0)  # warm-up: workers started, caches filled
            t = time_batches(batches, consume, args.seconds)
            rate = t["batches"] * args.batch / (t["wall_s"] if args.workers else t["cpu_s"])
            rates[name].append(rate)
            print(f"round {r + 1} {name:24s} {rate:8.1f} images/s per core", flush=True)
    return {
        name: {
            "images_per_core_s_median": round(statistics.median(v), 1),
            "images_per_core_s_min_max": [round(min(v), 1), round(max(v), 1)],
            "rounds": [round(x, 1) for x in v],
        }
        for name, v in rates.items()
    }


def versions() -> dict[str, str]:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64, help="synthetic training images to generate")
    ap.add_argument("--size", type=int, default=384, help="packed / input size (the paper's 384)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0, help="about this long per loader per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, choices=[0, 1], default=0, help="0: in-process; 1: one worker")
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git rev of packed_per_sample_before")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "loader.json"))
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):  # one core: per-core figures, whatever else is running
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    peaks = measured_peaks(torch.device("cpu"))
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        raw, packed = make_data(Path(tmp), args.images, args.size)
        results = measure(raw, packed, args)
    ref, strict = results["schp_iuv"], results["schp"]
    ratios = {
        name: {
            "vs_schp": round(r["images_per_core_s_median"] / strict["images_per_core_s_median"], 2),
            "vs_schp_iuv": round(r["images_per_core_s_median"] / ref["images_per_core_s_median"], 2),
        }
        for name, r in results.items()
        if name.startswith("packed")
    }
    for name, r in ratios.items():
        print(f"{name}: {r['vs_schp']:.2f}x schp, {r['vs_schp_iuv']:.2f}x schp_iuv (per core)")
    report = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "settings": vars(args),
        "mode": "in-process, one pinned core, CPU time" if args.workers == 0 else "1 worker, wall time",
        "augmentation": "flip 0.5, scale 0.8-1.2, rotation +-15 deg (AugmentConfig defaults, the paper's)",
        "machine": machine(load_before),
        "peak_flop_per_s": peaks,
        "versions": versions(),
        "results": results,
        "ratio_per_core": ratios,
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
