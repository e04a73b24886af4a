"""`spd predict`: masks and overlays for a folder; a corrupt file is reported, not fatal to the rest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from spd.labels import LIP_JOINTS


def test_predict_folder_with_a_corrupt_file_processes_the_rest_and_names_it(
    tiny_model_file: Path, project_root: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "b.jpg"), rng.integers(0, 256, (25, 60, 3), dtype=np.uint8))
    cv2.imwrite(str(images / "gray.png"), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    ok, jpg = cv2.imencode(".jpg", rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))
    (images / "broken.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])  # a cut-off download
    (images / "notes.txt").write_text("not an image, not picked up")
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    out = tmp_path / "out"

    cmd = [
        sys.executable, "-m", "pipeline.cli", "predict", "--params", str(tmp_path / "params.yaml"),
        str(images), "--model", str(tiny_model_file), "--out", str(out), "--joints", "--iuv", "--flip-tta",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "2", **_env()}
    )

    assert proc.returncode == 1, proc.stderr
    assert str(images / "broken.jpg") in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr
    for stem, (h, w) in {"a": (40, 30), "b": (25, 60), "gray": (16, 16)}.items():
        mask = cv2.imread(str(out / f"{stem}_mask.png"))
        overlay = cv2.imread(str(out / f"{stem}_overlay.png"))
        iuv = cv2.imread(str(out / f"{stem}_iuv.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == overlay.shape == iuv.shape == (h, w, 3), stem
        assert iuv[..., 0].max() <= 24  # DensePose part index, as the first channel
        joints = json.loads((out / f"{stem}_joints.json").read_text())["joints"]
        assert [j["joint"] for j in joints] == list(LIP_JOINTS)
        assert all(0 <= j["x"] <= w - 1 and 0 <= j["y"] <= h - 1 for j in joints)
    assert not list(out.glob("broken*")) and not list(out.glob("notes*"))
    assert not list(out.glob(".*tmp"))


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
