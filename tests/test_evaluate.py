"""`spd evaluate`: DVC-readable reports that agree with the training loop's own evaluation."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import pytest

from pipeline.cli import main as spd_main
from pipeline.evaluate import CONFUSION_ROWS
from spd.labels import COARSE_GROUPS, LIP_CLASSES, LIP_JOINTS


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


def test_evaluate_writes_dvc_reports_that_match_the_training_evaluation(
    tiny_model_64: Path, prepared_tiny: Path, prepared_cross_tiny: Path, project_root: Path, tmp_path: Path
) -> None:
    from torch.utils.data import DataLoader

    from spd.data.dataset import SPDDataset
    from spd.engine import evaluate
    from spd.model import load_model_file

    assert spd_main(project(tmp_path, project_root, tiny_model_64, prepared_tiny, prepared_cross_tiny)) == 0
    reports = tmp_path / "reports"
    metrics = json.loads((reports / "metrics.json").read_text())

    # The same numbers as the training loop's evaluation of the same model on the same split.
    model, info = load_model_file(tiny_model_64)
    loader = DataLoader(SPDDataset(prepared_tiny / "val"), batch_size=4)
    reference = evaluate(model, loader, "cpu", num_classes=20, tasks=info["model_cfg"].tasks)
    assert metrics["num_images"] == reference["num_images"] == 8
    for key in ("miou", "pixel_acc", "mean_acc", "pckh"):
        assert metrics[key] == pytest.approx(reference[key], abs=0.02), key
    assert set(metrics["pckh_per_joint"]) == set(LIP_JOINTS)
    assert {"dp_miou", "dp_uv_error", "per_image_miou", "coarse_miou"} <= set(metrics)

    # Cross-dataset: scored on the coarse groups of the ATR-layout data.
    cross = metrics["cross"]
    assert cross["num_images"] > 0
    info = json.loads((reports / "evaluation.json").read_text())  # names and flags: not DVC metrics
    assert info["label_set"] == "lip" and info["cross_label_set"] == "atr"
    assert all(isinstance(v, (int, float)) for v in _leaves(metrics))
    assert set(cross["coarse_iou"]) == set(COARSE_GROUPS)
    assert 0.0 <= cross["coarse_miou"] <= 1.0

    with (reports / "per_class_iou.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == list(LIP_CLASSES)
    assert sum(float(r["iou"]) for r in rows) / 20 == pytest.approx(metrics["miou"], abs=1e-5)

    with (reports / "confusion.csv").open() as f:
        pairs = list(csv.DictReader(f))
    assert 0 < len(pairs) <= CONFUSION_ROWS
    assert {p["actual"] for p in pairs} <= set(LIP_CLASSES) and {p["predicted"] for p in pairs} <= set(
        LIP_CLASSES
    )
    sampled_acc = sum(p["actual"] == p["predicted"] for p in pairs) / len(pairs)
    assert sampled_acc == pytest.approx(metrics["pixel_acc"], abs=0.03)

    sheet = cv2.imread(str(reports / "overlays.png"))
    assert sheet.shape[0] > 3 * 128 and sheet.shape[1] == 4 * 128  # 3 rows of 4 panels + header

    # Deterministic: a second run writes the same files.
    before = {p.name: p.read_bytes() for p in reports.iterdir()}
    assert spd_main(project(tmp_path, project_root, tiny_model_64, prepared_tiny, prepared_cross_tiny)) == 0
    assert before == {p.name: p.read_bytes() for p in reports.iterdir()}


def test_evaluate_without_cross_data_and_with_flip_tta(
    tiny_model_64: Path, prepared_tiny: Path, project_root: Path, tmp_path: Path
) -> None:
    args = project(tmp_path, project_root, tiny_model_64, prepared_tiny, None, "evaluate.flip_tta=true")
    assert spd_main(args) == 0
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    info = json.loads((tmp_path / "reports" / "evaluation.json").read_text())
    assert info["flip_tta"] is True and "cross" not in metrics


def test_evaluate_names_a_missing_model_file(
    prepared_tiny: Path, project_root: Path, tmp_path: Path, capsys
) -> None:
    missing = tmp_path / "nope.pt"
    assert spd_main(project(tmp_path, project_root, missing, prepared_tiny, None)) == 1
    assert f"{missing}: model file not found" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def _leaves(doc: dict) -> list:
    return [x for v in doc.values() for x in (_leaves(v) if isinstance(v, dict) else [v]) if x is not None]
