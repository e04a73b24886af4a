"""`spd evaluate`: the trained model on the prepared val split(s) -> reports for DVC.

Scored by `spd.engine.evaluate`, the training validation's code: a DataLoader
over the packed val split without augmentation, the model at the packed size, metrics at the packed
labels' resolution (padding is ignore), flip TTA from `evaluate.flip_tta` (`spd.tta.flip_average`,
the predictor's). DensePose U/V errors are therefore those of the float U, V maps, as in training
(before, the stage scored the predictor's uint8-quantised IUV). Writes, atomically, under
`evaluate.out_dir`:
- `metrics.json` (DVC metrics): mIoU, pixel acc, mean acc (SCHP definitions), the per-image mIoU
  variant, coarse-group mIoU (the fine confusion matrix regrouped), the left/right parts' side
  accuracy and merged-pair mIoU (`ConfusionMatrix.sides`), PCKh@0.5 overall and per joint,
  DensePose part mIoU and U/V error; with `prepare.cross` packed, `cross`: mIoU on the coarse groups
  both label sets share (the same evaluation with both label sets mapped onto the groups; numbers
  only: the label sets, flip TTA and model file are in `evaluation.json`);
- `per_class_iou.csv` (class, iou) for a bar plot;
- `confusion.csv` (actual, predicted; class names) for DVC's confusion template: the confusion
  matrix scaled to at most CONFUSION_ROWS rows (each cell its proportional share), so the file
  stays small for any val set;
- `overlays.png`: `evaluate.overlays` rows of image | truth | prediction | joints, rendered from
  `spd.predict.Predictor` (the code consumers run) on the first val images; not metrics.
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
from spd.labels import COARSE_GROUPS, LABEL_SETS, LIP_JOINTS, class_flip_map, coarse_lut

CONFUSION_ROWS = 20_000
PANEL_MIN = 128  # overlay panels are upscaled to at least this many pixels
DEVICE = "cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-file", default=None, help="model to evaluate (default: train.model_out)")


def _scoring_options(info: dict, flip_tta: bool) -> dict[str, Any]:
    """`spd.engine.evaluate` keyword arguments of this stage for a model (its `load_model_file` info)."""
    from spd.precision import autocast_dtype

    return {
        "autocast_dtype": autocast_dtype("auto", DEVICE),
        "channels_last": True,
        "flip_tta": flip_tta,
        "label_set": str(info["label_set"]),
    }


def _val_loader(split: Any, batch_size: int) -> Any:
    """The packed split in order, without augmentation."""
    from torch.utils.data import DataLoader

    from spd.data.dataset import SPDDataset

    return DataLoader(SPDDataset(split, augment=None), batch_size=batch_size)


def evaluate_split(model: Any, info: dict, split: Any, batch_size: int, flip_tta: bool) -> dict[str, Any]:
    """`spd.engine.evaluate` on a packed split in the model's label set, plus the coarse mIoU from
    its confusion matrix; returns {"metrics", "confusion" ((K, K) counts)}."""
    from spd.engine import evaluate
    from spd.metrics import ConfusionMatrix

    scores = evaluate(
        model,
        _val_loader(split, batch_size),
        DEVICE,
        num_classes=int(info["num_classes"]),
        tasks=tuple(info["model_cfg"].tasks),
        **_scoring_options(info, flip_tta),
    )
    confusion = ConfusionMatrix.from_counts(scores.pop("confusion"))
    metrics: dict[str, Any] = {}
    for key, value in scores.items():
        metrics[key] = dict(zip(LIP_JOINTS, value)) if key == "pckh_per_joint" else value
        if key == "per_image_miou":
            coarse = confusion.regroup(coarse_lut(split.label_set), len(COARSE_GROUPS))
            metrics["coarse_miou"] = coarse.compute()["miou"]
            metrics |= confusion.sides(class_flip_map(split.label_set))
    return {"metrics": metrics, "confusion": confusion.mat.numpy()}


def evaluate_cross(model: Any, info: dict, split: Any, batch_size: int, flip_tta: bool) -> dict[str, Any]:
    """A model trained on one label set scored on another's data, on the shared coarse groups."""
    from spd.engine import evaluate

    m = evaluate(
        model,
        _val_loader(split, batch_size),
        DEVICE,
        num_classes=len(COARSE_GROUPS),
        tasks=("seg",),
        label_maps=(coarse_lut(split.label_set), coarse_lut(info["label_set"])),
        **_scoring_options(info, flip_tta),
    )
    return {
        "label_set": split.label_set,
        "num_images": m["num_images"],
        "coarse_miou": m["miou"],
        "coarse_pixel_acc": m["pixel_acc"],
        "coarse_iou": dict(zip(COARSE_GROUPS, m["per_class_iou"])),
    }


def confusion_rows(confusion: np.ndarray, limit: int = CONFUSION_ROWS) -> np.ndarray:
    """(N <= limit, 2) (actual, predicted) id pairs, each confusion cell repeated its proportional
    share of `limit` (largest remainder, ties by cell order): deterministic, and the sampled
    accuracy is the pixel accuracy to within K / limit."""
    counts = confusion.astype(np.int64).ravel()
    total = int(counts.sum())
    if total > limit:
        share, remainder = np.divmod(counts * limit, total)  # exact in int64 up to ~4e14 pixels
        short = limit - int(share.sum())
        share[np.argsort(-remainder, kind="stable")[:short]] += 1
        counts = share
    cells = np.repeat(np.arange(counts.size), counts)
    return np.stack(np.divmod(cells, confusion.shape[1]), axis=1)


def overlay_rows(predictor: Any, split: Any, count: int, batch_size: int) -> list:
    """(image, truth, prediction, joints) of the first `count` images, from the predictor."""
    rows = []
    for start in range(0, min(count, len(split)), batch_size):
        stop = min(count, len(split), start + batch_size)
        images = [np.array(split.images[i]) for i in range(start, stop)]
        preds = predictor.predict_batch(images, iuv=False)
        for i, (image, pred) in enumerate(zip(images, preds), start):
            rows.append((image, np.array(split.parsing[i]), pred.labels, pred.joints))
    return rows


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

    Returns evaluate_split's dict (metrics incl. per_class_iou, confusion) plus `overlay_rows` and
    `label_set`, the val split's label set.
    """
    from pipeline import runtime
    from spd.data.packed import PackedSplit
    from spd.model import load_model_file
    from spd.predict import Predictor

    root = project_root
    if not model_file.is_file():
        raise SpdError(f"{model_file}: model file not found; run `spd train` first")
    cfg = params.evaluate
    model, info = load_model_file(model_file)
    val = PackedSplit(Path(runtime.resolve_path(root, params.prepare.main.out)) / "val")
    if val.label_set != info["label_set"]:
        raise SpdError(
            f"{val.dir}: labels are {val.label_set!r} but {model_file} predicts {info['label_set']!r}; "
            "evaluate on data prepared in the model's label set (prepare.main)"
        )
    if val.image_size != info["image_size"]:
        print(
            f"note: val packed at {val.image_size} px, model trained at {info['image_size']} px; "
            "scored at the packed size, as training validation does"
        )

    result = evaluate_split(model, info, val, cfg.batch_size, cfg.flip_tta)
    cross = params.prepare.cross
    if cross is not None:
        cross_val = Path(runtime.resolve_path(root, cross.out)) / "val"
        if (cross_val / "manifest.json").is_file():
            cross_split = PackedSplit(cross_val)
            result["metrics"]["cross"] = evaluate_cross(
                model, info, cross_split, cfg.batch_size, cfg.flip_tta
            )
        else:
            print(f"note: prepare.cross is set but {cross_val} is not prepared; no cross-dataset score")
    # torch: the overlays are a handful of images, fewer than repay an ONNX export at load (~2 s), and
    # they then show the very network (and precision) the metrics above measured.
    predictor = Predictor(model, info, device=DEVICE, flip_tta=cfg.flip_tta, backend="torch")
    result["overlay_rows"] = overlay_rows(predictor, val, cfg.overlays, cfg.batch_size)
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
    w.writerows((classes[a], classes[p]) for a, p in confusion_rows(result["confusion"]).tolist())
    atomic_write_text(out / "confusion.csv", buf.getvalue())
    atomic_write_bytes(out / "overlays.png", overlay_sheet(result["overlay_rows"], result["label_set"]))
    info = {"label_set": result["label_set"], "flip_tta": cfg.flip_tta, "model_file": str(model_file)}
    if "cross" in metrics:
        info["cross_label_set"] = metrics["cross"].pop("label_set")
    atomic_write_json(out / "evaluation.json", info)  # what was scored how: not metrics
    atomic_write_json(out / "metrics.json", metrics)

    line = f"val mIoU {metrics['miou']:.4f}, pixel acc {metrics['pixel_acc']:.4f}"
    if "pckh" in metrics:
        line += f", PCKh@0.5 {metrics['pckh']:.4f}"
    if "side_accuracy" in metrics:
        line += f", left/right side accuracy {metrics['side_accuracy']:.3f} (0.5: chance)"
    if "cross" in metrics:
        line += f", cross ({info['cross_label_set']}) coarse mIoU {metrics['cross']['coarse_miou']:.4f}"
    print(f"{line} -> {out}")
    return 0
