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


def test_two_predict_runs_at_once_with_and_without_flip_tta_each_give_their_own_result(
    tiny_model_file: Path, project_root: Path, tmp_path: Path
) -> None:
    """`spd predict --flip-tta` and `spd predict` over the same photos, at the same time: each writes
    what it writes when run alone."""
    from spd.data.synth import generate_sample

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for k, size in enumerate((48, 64, 80)):
        cv2.imwrite(str(images / f"p{k}.png"), generate_sample(rng, image_size=size).image[:, :, ::-1])
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")

    def command(out: Path, flip: bool) -> list[str]:
        cmd = [sys.executable, "-m", "pipeline.cli", "predict", "--params", str(tmp_path / "params.yaml"),
               str(images), "--model", str(tiny_model_file), "--out", str(out)]  # fmt: skip
        return cmd + (["--flip-tta"] if flip else [])

    env = {**_env(), "OMP_NUM_THREADS": "1"}
    for flip in (False, True):  # alone, one after the other
        subprocess.run(command(tmp_path / f"alone-{flip}", flip), check=True, env=env, timeout=300)
    together = [
        subprocess.Popen(command(tmp_path / f"together-{flip}", flip), env=env, stderr=subprocess.PIPE)
        for flip in (False, True)
    ]
    for proc in together:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]

    masks = {
        (run, flip, k): cv2.imread(str(tmp_path / f"{run}-{flip}" / f"p{k}_mask.png"))
        for run in ("alone", "together")
        for flip in (False, True)
        for k in range(3)
    }
    # The check can fail: the option changes these masks.
    assert any(not np.array_equal(masks["alone", False, k], masks["alone", True, k]) for k in range(3))
    for flip in (False, True):
        for k in range(3):
            np.testing.assert_array_equal(masks["together", flip, k], masks["alone", flip, k])


def test_backend_option_runs_the_network_on_onnx_runtime_or_torch_with_the_same_masks(
    tiny_model_file: Path, project_root: Path, tmp_path: Path, torch_threads, monkeypatch, capsys
) -> None:
    from pipeline.cli import main

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for k, (h, w) in enumerate([(40, 30), (64, 96)]):
        cv2.imwrite(str(images / f"p{k}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")

    def predict(backend: str) -> int:
        params = str(tmp_path / "params.yaml")
        model, out = str(tiny_model_file), str(tmp_path / backend)
        return main(
            ["predict", "--params", params, str(images), "--model", model, "--out", out, "--backend", backend]
        )

    assert predict("onnx") == 0 and predict("torch") == 0
    colours = set()
    for k in range(2):
        onnx, eager = (cv2.imread(str(tmp_path / b / f"p{k}_mask.png")) for b in ("onnx", "torch"))
        assert np.mean(onnx == eager) >= 0.999
        colours |= set(map(tuple, eager.reshape(-1, 3)))
    assert len(colours) > 1  # the masks are not one class, which would match trivially

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as on a machine without it
    capsys.readouterr()
    assert predict("onnx") == 1
    assert "spd predict: error: backend onnx: onnxruntime is not installed" in capsys.readouterr().err
