"""`spd evaluate`: the trained model on the prepared val split(s) -> reports for DVC.

Predictions come from `spd.predict.Predictor` (the code consumers run, flip TTA from
`evaluate.flip_tta`) on the packed val images, scored at packed resolution against the packed
labels (padding is ignore). Writes, atomically, under `evaluate.out_dir`:
- `metrics.json` (DVC metrics): mIoU, pixel acc, mean acc (SCHP definitions), the per-image mIoU
  variant, coarse-group mIoU, PCKh@0.5 overall and per joint, DensePose part mIoU and U/V error;
  with `prepare.cross` packed, `cross`: mIoU on the coarse groups both label sets share (numbers
  only; the label sets, flip TTA and model file are in `evaluation.json`);
- `per_class_iou.csv` (class, iou) for a bar plot;
- `confusion.csv` (actual, predicted; class names) for DVC's confusion template: a seeded uniform
  sample of at most CONFUSION_ROWS labelled pixels, so the file stays small for any val set;
- `overlays.png`: `evaluate.overlays` rows of image | truth | prediction | joints.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Params
from spd.errors import SpdError
from spd.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from spd.labels import COARSE_GROUPS, IGNORE, LABEL_SETS, LIP_JOINTS, coarse_lut

CONFUSION_ROWS = 20_000
PANEL_MIN = 128  # overlay panels are upscaled to at least this many pixels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-file", default=None, help="model to evaluate (default: train.model_out)")


def _clean(v: Any) -> Any:
    """NaN (nothing to measure) -> None so the JSON stays valid."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def evaluate_split(
    predictor: Any, split: Any, batch_size: int, overlays: int, seed: int = 0
) -> dict[str, Any]:
    """Score `predictor` on a packed split in its own label set; also returns the overlay rows."""
    from spd.metrics import ConfusionMatrix, DensePoseAccumulator, PCKhAccumulator, PerImageIoU

    n, size = len(split), split.image_size
    conf, per_image = ConfusionMatrix(split.num_classes), PerImageIoU(split.num_classes)
    coarse = ConfusionMatrix(len(COARSE_GROUPS))
    lut = coarse_lut(split.label_set)
    pckh = PCKhAccumulator() if "pose" in predictor.tasks else None
    dp = DensePoseAccumulator() if "densepose" in predictor.tasks else None
    keep_p = min(1.0, CONFUSION_ROWS / max(1, n * size * size))
    rng = np.random.default_rng(seed)
    pairs: list[np.ndarray] = []
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
    for idx in _batches(n, batch_size):
        images = [np.array(split.images[i]) for i in idx]
        preds = predictor.predict_batch(images)
        target = np.array(split.parsing[idx.start : idx.stop])  # (B, S, S)
        pred = np.stack([p.labels for p in preds])  # (B, S, S)
        conf.update(target, pred)
        per_image.update(target, pred)
        coarse.update(lut[target], lut[pred])
        sampled = (rng.random(target.shape) < keep_p) & (target != IGNORE)
        pairs.append(np.stack([target[sampled], pred[sampled]], axis=1))
        if pckh is not None:
            joints = np.stack([p.joints for p in preds])  # (B, 16, 3) in packed pixels
            pckh.update(
                joints,
                np.array(split.keypoints[idx.start : idx.stop]),
                np.array(split.has_pose[idx.start : idx.stop]),
            )
        if dp is not None:
            has = np.array(split.has_iuv[idx.start : idx.stop])
            if has.any():
                t_iuv = np.array(split.iuv[idx.start : idx.stop])[has]  # (b, S, S, 3)
                p_iuv = np.stack([p.iuv for p in preds])[has]
                dp.update(
                    t_iuv[..., 0],
                    p_iuv[..., 0],
                    np.moveaxis(t_iuv[..., 1:], -1, 1) / 255.0,
                    np.moveaxis(p_iuv[..., 1:], -1, 1) / 255.0,
                )
        for j in range(min(len(idx), overlays - len(rows))):
            rows.append((images[j], target[j], pred[j], preds[j].joints))
    metrics: dict[str, Any] = conf.compute() | per_image.compute()
    metrics["coarse_miou"] = coarse.compute()["miou"]
    if pckh is not None:
        m = pckh.compute()
        metrics["pckh"] = m["pckh"]
        metrics["pckh_per_joint"] = dict(zip(LIP_JOINTS, m["pckh_per_joint"]))
    if dp is not None:
        metrics |= dp.compute()
    metrics["num_images"] = n
    sample = np.concatenate(pairs)[:CONFUSION_ROWS] if pairs else np.zeros((0, 2), np.uint8)
    return {"metrics": metrics, "confusion_sample": sample, "overlay_rows": rows}


def evaluate_cross(predictor: Any, split: Any, batch_size: int) -> dict[str, Any]:
    """A model trained on one label set scored on another's data, on the shared coarse groups."""
    from spd.metrics import ConfusionMatrix

    model_lut, data_lut = coarse_lut(predictor.label_set), coarse_lut(split.label_set)
    conf = ConfusionMatrix(len(COARSE_GROUPS))
    for idx in _batches(len(split), batch_size):
        preds = predictor.predict_batch([np.array(split.images[i]) for i in idx], iuv=False)
        pred = model_lut[np.stack([p.labels for p in preds])]
        target = data_lut[np.array(split.parsing[idx.start : idx.stop])]
        target[pred == IGNORE] = IGNORE  # a model class without a group is not scored (none for LIP)
        conf.update(target, pred)
    m = conf.compute()
    return {
        "label_set": split.label_set,
        "num_images": len(split),
        "coarse_miou": m["miou"],
        "coarse_pixel_acc": m["pixel_acc"],
        "coarse_iou": dict(zip(COARSE_GROUPS, m["per_class_iou"])),
    }


def overlay_sheet(rows: list, label_set: str) -> bytes:
    """PNG: one row per sample, columns image | truth | prediction | predicted joints."""
    import cv2

    from pipeline.predict import colorize, draw_joints, encode_png

    if not rows:
        return encode_png(np.zeros((PANEL_MIN, 4 * PANEL_MIN, 3), np.uint8))
    lines = []
    for image, target, pred, joints in rows:
        s = image.shape[0]
        k = max(1, math.ceil(PANEL_MIN / s))
        panels = [
            image,
            colorize(target),
            colorize(pred),
            draw_joints(image, joints) if joints is not None else image,
        ]
        big = [cv2.resize(p, (s * k, s * k), interpolation=cv2.INTER_NEAREST) for p in panels]
        lines.append(np.concatenate(big, axis=1))
    sheet = np.concatenate(lines, axis=0)
    header = np.full((24, sheet.shape[1], 3), 255, np.uint8)
    for c, title in enumerate(("image", "truth", "prediction", "joints")):
        x = c * sheet.shape[1] // 4 + 4
        cv2.putText(
            header,
            f"{title} ({label_set})" if c == 1 else title,
            (x, 17),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
        )
    return encode_png(np.concatenate([header, sheet], axis=0))


def evaluate_model(params: Params, model_file: Path, *, project_root: Path) -> dict[str, Any]:
    """Score a model file on prepare.main's val split and, when prepared, on prepare.cross's val split
    (coarse groups, as `metrics["cross"]`). Writes nothing: `run` and `spd ablation` share it.

    Returns evaluate_split's dict (metrics incl. per_class_iou, confusion_sample, overlay_rows) plus
    `label_set`, the val split's label set.
    """
    from pipeline import runtime
    from spd.data.packed import PackedSplit
    from spd.predict import Predictor

    root = project_root
    if not model_file.is_file():
        raise SpdError(f"{model_file}: model file not found; run `spd train` first")
    cfg = params.evaluate
    predictor = Predictor.from_checkpoint(model_file, flip_tta=cfg.flip_tta)
    val = PackedSplit(Path(runtime.resolve_path(root, params.prepare.main.out)) / "val")
    if val.label_set != predictor.label_set:
        raise SpdError(
            f"{val.dir}: labels are {val.label_set!r} but {model_file} predicts {predictor.label_set!r}; "
            "evaluate on data prepared in the model's label set (prepare.main)"
        )
    if val.image_size != predictor.image_size:
        print(f"note: val packed at {val.image_size} px, model trained at {predictor.image_size} px")

    result = evaluate_split(predictor, val, cfg.batch_size, cfg.overlays)
    metrics = result["metrics"]
    cross = params.prepare.cross
    if cross is not None:
        cross_val = Path(runtime.resolve_path(root, cross.out)) / "val"
        if (cross_val / "manifest.json").is_file():
            metrics["cross"] = evaluate_cross(predictor, PackedSplit(cross_val), cfg.batch_size)
        else:
            print(f"note: prepare.cross is set but {cross_val} is not prepared; no cross-dataset score")
    result["label_set"] = val.label_set
    return result


def run(params: Params, args: argparse.Namespace) -> int:
    from pipeline import runtime

    root = runtime.project_root(args.params)
    model_file = Path(runtime.resolve_path(root, args.model_file or params.train.model_out))
    cfg = params.evaluate
    result = evaluate_model(params, model_file, project_root=root)
    metrics = result["metrics"]
    per_class = metrics.pop("per_class_iou")

    out = Path(runtime.resolve_path(root, cfg.out_dir))
    classes = LABEL_SETS[result["label_set"]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "iou"])
    w.writerows([name, round(iou, 6)] for name, iou in zip(classes, per_class))
    atomic_write_text(out / "per_class_iou.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["actual", "predicted"])
    w.writerows((classes[a], classes[p]) for a, p in result["confusion_sample"].tolist())
    atomic_write_text(out / "confusion.csv", buf.getvalue())
    atomic_write_bytes(out / "overlays.png", overlay_sheet(result["overlay_rows"], result["label_set"]))
    info = {"label_set": result["label_set"], "flip_tta": cfg.flip_tta, "model_file": str(model_file)}
    if "cross" in metrics:
        info["cross_label_set"] = metrics["cross"].pop("label_set")
    atomic_write_json(out / "evaluation.json", info)  # what was scored how: not metrics
    atomic_write_json(out / "metrics.json", _clean(metrics))

    line = f"val mIoU {metrics['miou']:.4f}, pixel acc {metrics['pixel_acc']:.4f}"
    if "pckh" in metrics:
        line += f", PCKh@0.5 {metrics['pckh']:.4f}"
    if "cross" in metrics:
        line += f", cross ({info['cross_label_set']}) coarse mIoU {metrics['cross']['coarse_miou']:.4f}"
    print(f"{line} -> {out}")
    return 0
