"""Raw dataset (synthetic/LIP layout or ATR) -> packed, letterboxed arrays per split + manifest.

One pass decodes, validates and writes each sample. Every bad file is collected as (file, reason);
with bad_data="fail" the whole list is raised as one DataError after the pass (and the temporary
output is discarded), with "skip" the bad samples are dropped and listed in the manifest.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spd.config import SourceConfig
from spd.data.atr import read_atr
from spd.data.imageio import read_image, read_label
from spd.data.iuv import read_iuv
from spd.data.letterbox import (
    letterbox_image,
    letterbox_iuv,
    letterbox_keypoints,
    letterbox_label,
    letterbox_params,
)
from spd.data.lip import SPLITS, Problem, RawSample, RawSplit, read_lip_split
from spd.data.packed import PackedWriter
from spd.errors import DataError
from spd.io import atomic_output_dir
from spd.labels import IGNORE, LABEL_SETS, NUM_DP_PARTS, NUM_JOINTS


def label_set_of(source: str) -> str:
    return "atr" if source == "atr" else "lip"


def read_source(src: SourceConfig) -> dict[str, RawSplit]:
    root = Path(src.root)
    if not root.exists():
        raise DataError(f"{root}: dataset root not found (prepare source {src.source!r})")
    if src.source == "atr":
        return read_atr(root, src.val_fraction, src.split_seed, src.iuv_root)
    return {split: read_lip_split(root, split, src.iuv_root) for split in SPLITS}


def _problem(e: DataError, fallback: Path) -> Problem:
    text = str(e)
    prefix = f"{fallback}: "
    if text.startswith(prefix):
        return Problem(str(fallback), text[len(prefix) :])
    return Problem(str(fallback), text)


def _load(sample: RawSample, num_classes: int) -> tuple[dict[str, np.ndarray], Problem | None]:
    """Decode one sample's files; the first problem found, if any."""
    try:
        image = read_image(sample.image)
    except DataError as e:
        return {}, _problem(e, sample.image)
    try:
        parsing = read_label(sample.parsing)
    except DataError as e:
        return {}, _problem(e, sample.parsing)
    if parsing.shape != image.shape[:2]:
        return {}, Problem(
            str(sample.parsing), f"parsing size {parsing.shape[1]}x{parsing.shape[0]} differs from "
            f"its image's {image.shape[1]}x{image.shape[0]}"
        )  # fmt: skip
    labelled = parsing[parsing != IGNORE]
    top = int(labelled.max(initial=0))
    if top >= num_classes:
        return {}, Problem(
            str(sample.parsing), f"label id {top} out of range 0..{num_classes - 1} (255 = ignore)"
        )
    out = {"image": image, "parsing": parsing}
    if sample.iuv is not None:
        try:
            iuv = read_iuv(sample.iuv)
        except DataError as e:
            return {}, _problem(e, sample.iuv)
        if iuv.shape[:2] != image.shape[:2]:
            return {}, Problem(
                str(sample.iuv), f"IUV size {iuv.shape[1]}x{iuv.shape[0]} differs from its image's"
            )
        out["iuv"] = iuv
    return out, None


def _letterboxed(
    arrays: dict[str, np.ndarray], keypoints: np.ndarray | None, image_size: int, lb: Any
) -> dict[str, Any]:
    """One sample's arrays letterboxed into the packed square (the PackedWriter.put fields)."""
    if "iuv" in arrays:
        iuv = letterbox_iuv(arrays["iuv"], image_size, lb)
    else:
        iuv = np.zeros((image_size, image_size, 3), np.uint8)
        iuv[..., 0] = IGNORE
    pose = keypoints is not None
    kps = letterbox_keypoints(keypoints, image_size, lb) if pose else np.zeros((NUM_JOINTS, 3), np.float32)
    return {
        "images": letterbox_image(arrays["image"], image_size, lb),
        "parsing": letterbox_label(arrays["parsing"], image_size, lb),
        "iuv": iuv,
        "keypoints": kps,
        "has_pose": pose,
        "has_iuv": "iuv" in arrays,
    }


def pack_split(
    raw: RawSplit,
    split_dir: Path,
    image_size: int,
    label_set: str,
    source: dict[str, Any],
    progress: bool = True,
) -> tuple[dict[str, Any], list[Problem]]:
    """Write one split's packed arrays and manifest into `split_dir`; returns (manifest, problems)."""
    from tqdm import tqdm

    num_classes = len(LABEL_SETS[label_set])
    problems = list(raw.problems)
    writer = PackedWriter(split_dir, len(raw.samples), image_size)
    ids, sizes, transforms, has_pose, has_iuv = [], [], [], [], []
    class_hist = np.zeros(256, np.int64)
    joint_vis = np.zeros(NUM_JOINTS, np.int64)
    k = 0
    bar = tqdm(
        raw.samples,
        desc=f"prepare {raw.name}",
        unit="img",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    for sample in bar:
        arrays, problem = _load(sample, num_classes)
        if problem is not None:
            problems.append(problem)
            continue
        h, w = arrays["image"].shape[:2]
        lb = letterbox_params(h, w, image_size)
        packed = _letterboxed(arrays, sample.keypoints, image_size, lb)
        writer.put(k, **packed)
        parsing, kps, pose = packed["parsing"], packed["keypoints"], packed["has_pose"]
        class_hist += np.bincount(parsing.ravel(), minlength=256)
        joint_vis += (kps[:, 2] > 0).astype(np.int64)
        ids.append(sample.id)
        sizes.append([h, w])
        transforms.append([lb.scale, lb.pad_x, lb.pad_y])
        has_pose.append(pose)
        has_iuv.append(packed["has_iuv"])
        k += 1
    manifest = {
        "split": raw.name,
        "label_set": label_set,
        "num_classes": num_classes,
        "image_size": image_size,
        "num_samples": k,
        "source": source,
        "ids": ids,
        "orig_sizes": sizes,
        "transforms": transforms,
        "has_pose": has_pose,
        "has_iuv": has_iuv,
        "class_histogram": {name: int(class_hist[i]) for i, name in enumerate(LABEL_SETS[label_set])},
        "joint_visibility": joint_vis.tolist(),
        "densepose_parts": NUM_DP_PARTS,
        "skipped": [{"file": p.file, "reason": p.reason} for p in problems],
    }
    writer.close(k, manifest)
    return manifest, problems


def format_problems(problems: list[Problem], what: str) -> str:
    lines = [f"{len(problems)} bad file(s) in {what} (prepare.bad_data=fail; set it to skip to drop them):"]
    lines += [f"  {p.file}: {p.reason}" for p in problems]
    return "\n".join(lines)


def prepare_into(
    src: SourceConfig,
    out_dir: Path,
    image_size: int,
    bad_data: str = "fail",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Pack `src` into `out_dir/{train,val}/` (a directory the caller makes atomic). Returns the
    manifests by split; raises DataError listing every bad file under bad_data="fail"."""
    raw = read_source(src)
    label_set = label_set_of(src.source)
    manifests: dict[str, dict] = {}
    all_problems: list[Problem] = []
    for split in SPLITS:
        layout = raw[split].layout
        source = {"type": src.source, "root": str(src.root), "layout": layout, "iuv_root": src.iuv_root}
        if src.source == "atr":
            source.update(val_fraction=src.val_fraction, split_seed=src.split_seed)
        manifest, problems = pack_split(raw[split], out_dir / split, image_size, label_set, source, progress)
        manifests[split] = manifest
        all_problems += problems
    if all_problems and bad_data == "fail":
        raise DataError(format_problems(all_problems, str(src.root)))
    for split, manifest in manifests.items():
        if manifest["num_samples"] == 0:
            raise DataError(f"{src.root}: split {split!r} is empty (no usable samples)")
    if all_problems and log is not None:
        log(f"skipped {len(all_problems)} bad file(s) in {src.root}:")
        for p in all_problems:
            log(f"  {p.file}: {p.reason}")
    return manifests


def prepare_sources(
    sources: list[SourceConfig],
    image_size: int,
    bad_data: str = "fail",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict]]:
    """Pack several sources, each into its `out`; all are renamed into place only if all succeed."""
    result: dict[str, dict[str, dict]] = {}
    with contextlib.ExitStack() as stack:
        for src in sources:
            tmp = stack.enter_context(atomic_output_dir(src.out))
            result[src.out] = prepare_into(src, tmp, image_size, bad_data, progress, log)
    return result
