"""ATR reader: `humanparsing/{JPEGImages,SegmentationClassAug}`; no official split, so a seeded one."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spd.data.lip import IMAGE_EXTENSIONS, Problem, RawSample, RawSplit, id_problem
from spd.errors import DataError


def atr_dirs(root: Path) -> tuple[Path, Path]:
    base = root / "humanparsing" if (root / "humanparsing").is_dir() else root
    return base / "JPEGImages", base / "SegmentationClassAug"


def read_atr(
    root: str | Path, val_fraction: float = 0.2, split_seed: int = 0, iuv_root: str | Path | None = None
) -> dict[str, RawSplit]:
    """{'train': RawSplit, 'val': RawSplit}: a seeded permutation of the sorted ids, `val_fraction`
    of them (at least one) in val. IUV PNGs, if any, are looked up as `iuv_root/<id>.png` or
    `iuv_root/{train,val}_iuv/<id>.png`."""
    root = Path(root)
    images_dir, labels_dir = atr_dirs(root)
    if not images_dir.is_dir():
        raise DataError(f"{root}: not an ATR dataset ({images_dir} not found)")
    problems: list[Problem] = []
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    samples: list[RawSample] = []
    seen: set[str] = set()
    for image in files:
        sample_id = image.stem
        bad = id_problem(sample_id)
        if bad:
            problems.append(Problem(str(image), bad))
            continue
        if sample_id in seen:
            problems.append(Problem(str(image), f"duplicate id {sample_id!r} (two image files)"))
            continue
        seen.add(sample_id)
        parsing = labels_dir / f"{sample_id}.png"
        if not parsing.exists():
            problems.append(Problem(str(image), f"no parsing file ({parsing} not found)"))
            continue
        samples.append(RawSample(sample_id, image, parsing))
    order = np.random.default_rng(split_seed).permutation(len(samples))
    n_val = max(1, round(len(samples) * val_fraction)) if samples else 0
    val_idx = set(order[:n_val].tolist())
    splits = {
        "train": RawSplit("train", [s for i, s in enumerate(samples) if i not in val_idx], layout="atr"),
        "val": RawSplit("val", [s for i, s in enumerate(samples) if i in val_idx], layout="atr"),
    }
    splits["train"].problems = problems
    if iuv_root is not None:
        iuv_root = Path(iuv_root)
        for name, split in splits.items():
            for s in split.samples:
                for cand in (iuv_root / f"{name}_iuv" / f"{s.id}.png", iuv_root / f"{s.id}.png"):
                    if cand.exists():
                        s.iuv = cand
                        break
    return splits
