"""LIP readers: the official and the flattened layout, the pose CSV, and where IUV PNGs live.

Readers only list what is on disk and parse the small text files; decoding images is the packer's
job (spd.data.prepare). Every problem found is returned as a `Problem` (file, reason) so that the
caller can fail with the whole list or skip the bad entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spd.errors import DataError
from spd.labels import NUM_JOINTS

SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Problem:
    file: str
    reason: str


@dataclass
class RawSample:
    id: str
    image: Path
    parsing: Path
    iuv: Path | None = None  # None: no DensePose label
    keypoints: np.ndarray | None = None  # (16, 3) x, y, v in source pixels, NaN = missing; None: no pose


@dataclass
class RawSplit:
    name: str
    samples: list[RawSample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    layout: str = ""


def id_problem(sample_id: str) -> str | None:
    """Why `sample_id` cannot be used as a file name stem, or None if it is fine."""
    if not sample_id:
        return "empty id"
    if "/" in sample_id or "\\" in sample_id or "\x00" in sample_id:
        return f"id {sample_id!r} contains a path separator"
    if ".." in sample_id or sample_id.startswith("."):
        return f"id {sample_id!r} contains '..' or starts with '.'"
    return None


def detect_lip_layout(root: Path) -> str:
    """'official' (TrainVal_images/...) or 'flattened' ({train,val}_images/ at the root)."""
    if (root / "TrainVal_images").is_dir():
        return "official"
    if (root / "train_images").is_dir() or (root / "val_images").is_dir():
        return "flattened"
    if not root.exists():
        raise DataError(f"{root}: dataset root not found")
    raise DataError(
        f"{root}: not a LIP dataset (expected TrainVal_images/ for the official layout or "
        "train_images/, val_images/ for the flattened one)"
    )


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def lip_split_paths(
    root: Path, split: str, layout: str, iuv_root: Path | None = None
) -> dict[str, Path | None]:
    if layout == "official":
        images = root / "TrainVal_images" / f"{split}_images"
        id_file = root / "TrainVal_images" / f"{split}_id.txt"
        parsing = root / "TrainVal_parsing_annotations" / f"{split}_segmentations"
    else:
        images = root / f"{split}_images"
        id_file = root / f"{split}_id.txt"
        parsing = root / f"{split}_segmentations"
    pose = _first_existing(
        root / "TrainVal_pose_annotations" / f"lip_{split}_set.csv", root / f"lip_{split}_set.csv"
    )
    if iuv_root is not None:
        iuv = iuv_root / f"{split}_iuv"
    else:
        iuv = _first_existing(root / "TrainVal_iuv_annotations" / f"{split}_iuv", root / f"{split}_iuv")
    return {"images": images, "id_file": id_file, "parsing": parsing, "pose": pose, "iuv": iuv}


def read_id_list(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read id list ({e})") from None
    return [line.strip() for line in lines if line.strip()]


def read_pose_csv(path: Path) -> tuple[dict[str, np.ndarray], list[Problem]]:
    """LIP pose CSV -> {id: (16, 3) float32 x, y, v (NaN where missing)}, problems per bad row.

    A row is `<id>.jpg` then 16 x (x, y, v); a missing joint is the text `nan`. A joint counts as
    labelled when its x and y are numbers (LIP's v marks occlusion, not presence).
    """
    out: dict[str, np.ndarray] = {}
    problems: list[Problem] = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read pose CSV ({e})") from None
    expected = 1 + 3 * NUM_JOINTS
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        where = f"{path}:{lineno}"
        if len(fields) != expected:
            problems.append(Problem(where, f"pose row has {len(fields)} fields; expected {expected}"))
            continue
        stem = fields[0]
        for ext in IMAGE_EXTENSIONS:
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
                break
        bad = id_problem(stem)
        if bad:
            problems.append(Problem(where, bad))
            continue
        try:
            values = np.array([float(f) for f in fields[1:]], np.float64).reshape(NUM_JOINTS, 3)
        except ValueError:
            bad_field = next(f for f in fields[1:] if not _is_number(f))
            problems.append(Problem(where, f"non-numeric pose value {bad_field!r}"))
            continue
        if np.isinf(values).any():
            problems.append(Problem(where, "infinite pose value"))
            continue
        if stem in out:
            problems.append(Problem(where, f"duplicate pose row for id {stem!r}"))
            continue
        kps = values.astype(np.float32)
        present = np.isfinite(kps[:, :2]).all(1)
        kps[~present] = np.nan
        kps[present, 2] = 1.0
        out[stem] = kps
    return out, problems


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return not math.isinf(float(text))


def _find_image(images: Path, sample_id: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        p = images / f"{sample_id}{ext}"
        if p.exists():
            return p
    return None


def read_lip_split(
    root: str | Path, split: str, iuv_root: str | Path | None = None, layout: str = "auto"
) -> RawSplit:
    """List one LIP split's samples (either layout). Missing files and bad ids become problems."""
    root = Path(root)
    layout = detect_lip_layout(root) if layout == "auto" else layout
    paths = lip_split_paths(root, split, layout, Path(iuv_root) if iuv_root else None)
    result = RawSplit(split, layout=layout)
    images_dir, id_file, parsing_dir = paths["images"], paths["id_file"], paths["parsing"]
    if id_file.exists():
        ids = read_id_list(id_file)
        id_source = str(id_file)
    elif images_dir.is_dir():
        ids = sorted(p.stem for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        id_source = str(images_dir)
    else:
        raise DataError(
            f"{root}: LIP {layout} layout has no {split} split ({id_file} and {images_dir} missing)"
        )
    poses: dict[str, np.ndarray] = {}
    if paths["pose"] is not None:
        poses, problems = read_pose_csv(paths["pose"])
        result.problems += problems
    seen: set[str] = set()
    for sample_id in ids:
        bad = id_problem(sample_id)
        if bad:
            result.problems.append(Problem(id_source, bad))
            continue
        if sample_id in seen:
            result.problems.append(Problem(id_source, f"duplicate id {sample_id!r}"))
            continue
        seen.add(sample_id)
        image = _find_image(images_dir, sample_id)
        if image is None:
            result.problems.append(Problem(str(images_dir / f"{sample_id}.jpg"), "image file not found"))
            continue
        parsing = parsing_dir / f"{sample_id}.png"
        if not parsing.exists():
            result.problems.append(Problem(str(image), f"no parsing file ({parsing} not found)"))
            continue
        iuv = None
        if paths["iuv"] is not None and (paths["iuv"] / f"{sample_id}.png").exists():
            iuv = paths["iuv"] / f"{sample_id}.png"
        result.samples.append(RawSample(sample_id, image, parsing, iuv, poses.get(sample_id)))
    return result
