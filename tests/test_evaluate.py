"""`spd evaluate`: DVC-readable reports from the one evaluation path, `spd.engine.evaluate`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.cli import main as spd_main
from pipeline.evaluate import CONFUSION_ROWS, confusion_rows
from spd.labels import COARSE_GROUPS, LIP_CLASSES, LIP_JOINTS, class_flip_map, coarse_lut
from spd.metrics import ConfusionMatrix


@pytest.fixture(scope="module")
def tiny_model_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model at the fixtures' packed size (64 px), so scoring is at 1:1 scale."""
    import torch

    from spd.config import ModelConfig
    from spd.model import build_model, save_model_file

    torch.manual_seed(1)
    cfg = ModelConfig(backbone="resnet18", head_channels=16)
    path = tmp_path_factory.mktemp("eval_model") / "spd.pt"
    save_model_file(path, build_model(cfg, len(LIP_CLASSES)), cfg, len(LIP_CLASSES), "lip", 64)
    return path


def project(
    tmp: Path, project_root: Path, model: Path, main: Path, cross: Path | None, *sets: str
) -> list[str]:
    shutil.copy(project_root / "params.yaml", tmp / "params.yaml")
    args = ["evaluate", "--params", str(tmp / "params.yaml"), "--model-file", str(model)]
    overrides = [f"prepare.main.out={main}", "evaluate.overlays=3", "evaluate.batch_size=4", *sets]
    overrides.append(f"prepare.cross.out={cross}" if cross else "prepare.cross=null")
    for o in overrides:
        args += ["--set", o]
    return args


def reference(model_file: Path, split: Path, **options: object) -> dict:
    """`spd.engine.evaluate` as training validation calls it, with the stage's precision settings
    (bf16 where native, channels_last: what the predictor runs) and batch size."""
    from torch.utils.data import DataLoader

    from spd.data.dataset import SPDDataset
    from spd.engine import evaluate
    from spd.model import load_model_file
    from spd.precision import autocast_dtype

    model, info = load_model_file(model_file)
    return evaluate(
        model,
        DataLoader(SPDDataset(split), batch_size=4),
        "cpu",
        autocast_dtype=autocast_dtype("auto", "cpu"),
        channels_last=True,
        label_set=info["label_set"],
        **{"num_classes": info["num_classes"], "tasks": info["model_cfg"].tasks} | options,
    )


def on_coarse_groups(model_file: Path, split: Path, data_label_set: str) -> dict:
    """The LIP model's segmentation scored on the coarse groups, data in `data_label_set`."""
    luts = (coarse_lut(data_label_set), coarse_lut("lip"))
    return reference(model_file, split, num_classes=len(COARSE_GROUPS), tasks=("seg",), label_maps=luts)


def test_evaluate_reports_are_the_training_evaluation_of_the_model(
    tiny_model_64: Path, prepared_tiny: Path, prepared_cross_tiny: Path, project_root: Path, tmp_path: Path
) -> None:
    assert spd_main(project(tmp_path, project_root, tiny_model_64, prepared_tiny, prepared_cross_tiny)) == 0
    reports = tmp_path / "reports"
    metrics = json.loads((reports / "metrics.json").read_text())

    # One evaluation path: the stage's numbers are spd.engine.evaluate's on the same model and split.
    expected = reference(tiny_model_64, prepared_tiny / "val")
    expected["pckh_per_joint"] = dict(zip(LIP_JOINTS, expected["pckh_per_joint"]))
    per_class_iou = expected.pop("per_class_iou")  # in per_class_iou.csv, for the bar plot
    confusion = np.array(expected.pop("confusion"))  # in confusion.csv, scaled, for the plot
    assert expected["num_images"] == 8
    from_confusion = ("coarse_miou", "cross", "side_accuracy", "side_merged_miou")
    assert {k: v for k, v in metrics.items() if k not in from_confusion} == expected
    assert {"dp_miou", "dp_uv_error", "per_image_miou", "pckh"} <= set(metrics)

    # How the left/right parts fare comes from the same confusion matrix.
    sides = ConfusionMatrix.from_counts(confusion).sides(class_flip_map("lip"))
    assert {k: metrics[k] for k in ("side_accuracy", "side_merged_miou")} == sides

    # Coarse groups come from the fine confusion matrix: the same as scoring the grouped labels.
    assert metrics["coarse_miou"] == on_coarse_groups(tiny_model_64, prepared_tiny / "val", "lip")["miou"]

    # Cross-dataset: the same evaluation on the ATR-layout data, both label sets mapped to the groups.
    cross = metrics["cross"]
    atr = on_coarse_groups(tiny_model_64, prepared_cross_tiny / "val", "atr")
    assert cross == {
        "num_images": atr["num_images"],
        "coarse_miou": atr["miou"],
        "coarse_pixel_acc": atr["pixel_acc"],
        "coarse_iou": dict(zip(COARSE_GROUPS, atr["per_class_iou"])),
    }
    assert cross["num_images"] > 0
    info = json.loads((reports / "evaluation.json").read_text())  # names and flags: not DVC metrics
    assert info["label_set"] == "lip" and info["cross_label_set"] == "atr"
    assert all(isinstance(v, (int, float)) for v in _leaves(metrics))

    with (reports / "per_class_iou.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == list(LIP_CLASSES)
    assert [float(r["iou"]) for r in rows] == pytest.approx(per_class_iou, abs=1e-6)

    # The confusion plot is the confusion matrix scaled to CONFUSION_ROWS rows.
    with (reports / "confusion.csv").open() as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == CONFUSION_ROWS  # 8 images of 64 x 64 labelled pixels are more
    ids = {name: i for i, name in enumerate(LIP_CLASSES)}
    assert [[ids[p["actual"]], ids[p["predicted"]]] for p in pairs] == confusion_rows(confusion).tolist()
    assert {p["actual"] for p in pairs} <= set(LIP_CLASSES) and {p["predicted"] for p in pairs} <= set(
        LIP_CLASSES
    )
    sampled_acc = sum(p["actual"] == p["predicted"] for p in pairs) / len(pairs)
    assert sampled_acc == pytest.approx(metrics["pixel_acc"], abs=20 / CONFUSION_ROWS)

    sheet = cv2.imread(str(reports / "overlays.png"))
    assert sheet.shape[0] > 3 * 128 and sheet.shape[1] == 4 * 128  # 3 rows of 4 panels + header

    # Deterministic: a second run writes the same files.
    before = {p.name: p.read_bytes() for p in reports.iterdir()}
    assert spd_main(project(tmp_path, project_root, tiny_model_64, prepared_tiny, prepared_cross_tiny)) == 0
    assert before == {p.name: p.read_bytes() for p in reports.iterdir()}


def test_confusion_rows_are_each_cells_proportional_share() -> None:
    confusion = np.array([[5, 1], [0, 2]])
    assert confusion_rows(confusion, limit=100).tolist() == [[0, 0]] * 5 + [[0, 1], [1, 1], [1, 1]]
    big = np.array([[3000, 10], [7, 990]])  # 4007 pixels -> 1000 rows
    rows = confusion_rows(big, limit=1000)
    counts = np.zeros_like(big)
    np.add.at(counts, (rows[:, 0], rows[:, 1]), 1)
    assert counts.sum() == 1000
    assert np.all(np.abs(counts - big * 1000 / big.sum()) < 1)
    assert np.array_equal(confusion_rows(big, limit=1000), rows)


def test_evaluate_without_cross_data_and_with_flip_tta(
    tiny_model_64: Path, prepared_tiny: Path, project_root: Path, tmp_path: Path
) -> None:
    args = project(tmp_path, project_root, tiny_model_64, prepared_tiny, None, "evaluate.flip_tta=true")
    assert spd_main(args) == 0
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    info = json.loads((tmp_path / "reports" / "evaluation.json").read_text())
    assert info["flip_tta"] is True and "cross" not in metrics
    flipped = reference(tiny_model_64, prepared_tiny / "val", flip_tta=True)
    assert metrics["miou"] == flipped["miou"] and metrics["pckh"] == flipped["pckh"]
    assert metrics["miou"] != reference(tiny_model_64, prepared_tiny / "val")["miou"]  # TTA changed it


def test_evaluate_names_a_missing_model_file(
    prepared_tiny: Path, project_root: Path, tmp_path: Path, capsys
) -> None:
    missing = tmp_path / "nope.pt"
    assert spd_main(project(tmp_path, project_root, missing, prepared_tiny, None)) == 1
    assert f"{missing}: model file not found" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def _leaves(doc: dict) -> list:
    return [x for v in doc.values() for x in (_leaves(v) if isinstance(v, dict) else [v]) if x is not None]
