"""The synthetic generator: deterministic bytes, consistent labels, left/right decided by pose."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from spd.data.synth import generate_sample, sample_rng, write_dataset
from spd.labels import ATR_CLASSES, LIP_CLASSES, lip_to_atr_lut

L = {n: i for i, n in enumerate(LIP_CLASSES)}
A = {n: i for i, n in enumerate(ATR_CLASSES)}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    kw = dict(layout="lip", train=5, val=2, image_size=48)
    write_dataset(tmp_path / "a", seed=3, **kw)
    write_dataset(tmp_path / "b", seed=3, **kw)
    write_dataset(tmp_path / "c", seed=4, **kw)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c
    assert "TrainVal_images/train_id.txt" in a and "TrainVal_iuv_annotations/val_iuv/val_00001.png" in a
    assert "TrainVal_pose_annotations/lip_train_set.csv" in a


def test_cli_synth_twice_gives_identical_bytes_and_atr_layout_has_atr_ids(
    tmp_path: Path, project_root: Path
) -> None:
    def synth(out: Path, *extra: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "pipeline.cli",
            "synth",
            "--out",
            str(out),
            "--seed",
            "3",
            "--train",
            "4",
            "--val",
            "2",
            "--image-size",
            "48",
            *extra,
        ]
        proc = subprocess.run(cmd, cwd=project_root, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    synth(tmp_path / "x")
    synth(tmp_path / "y")
    assert _files(tmp_path / "x") == _files(tmp_path / "y")
    synth(tmp_path / "atr", "--layout", "atr", "--domain", "shifted", "--count", "12")
    labels = sorted((tmp_path / "atr" / "humanparsing" / "SegmentationClassAug").glob("*.png"))
    images = sorted((tmp_path / "atr" / "humanparsing" / "JPEGImages").glob("*.jpg"))
    assert len(labels) == len(images) == 12
    ids = np.concatenate([cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ravel() for p in labels])
    assert ids.max() < len(ATR_CLASSES)
    assert {A["belt"], A["bag"]} & set(np.unique(ids).tolist())  # ATR-only classes do appear
    assert not (tmp_path / "atr" / "TrainVal_pose_annotations").exists()


def test_atr_ids_follow_lip_ids_with_sided_gloves_and_socks() -> None:
    lut = lip_to_atr_lut()
    seen_glove = seen_socks = False
    for i in range(60):
        s = generate_sample(sample_rng(1, "train", i, "base"), 64, "base", dense=False)
        mapped = lut[s.lip] != 255
        assert np.array_equal(lut[s.lip][mapped], s.atr[mapped])
        glove, socks = s.lip == L["glove"], s.lip == L["socks"]
        assert np.isin(s.atr[glove], [A["left_arm"], A["right_arm"]]).all()
        assert np.isin(s.atr[socks], [A["left_leg"], A["right_leg"]]).all()
        seen_glove |= glove.any()
        seen_socks |= socks.any()
    assert seen_glove and seen_socks


def test_the_persons_right_side_is_on_the_image_left_when_the_face_is_visible() -> None:
    """Facing the camera (face visible) the right shoulder (joint 12) is left of the left (13);
    seen from the back (no face) it is the other way round, as in LIP's person-centric labels."""
    front = back = 0
    agree = 0
    for i in range(150):
        s = generate_sample(sample_rng(2, "train", i, "base"), 96, "base", dense=False)
        k = s.keypoints
        if np.isnan(k[12, 0]) or np.isnan(k[13, 0]):
            continue
        face = (s.lip == L["face"]).any()
        front += face
        back += not face
        agree += (k[12, 0] < k[13, 0]) == face
    assert front > 30 and back > 30
    assert agree / (front + back) > 0.85


def test_labels_iuv_and_joints_are_consistent() -> None:
    for i in range(20):
        s = generate_sample(sample_rng(5, "val", i, "base"), 64, "base", dense=True)
        h, w = s.lip.shape
        assert s.image.shape == (h, w, 3) and s.iuv.shape == (h, w, 3) and max(h, w) == 64
        assert s.lip.max() < len(LIP_CLASSES)
        body = s.iuv[..., 0] > 0
        assert s.iuv[..., 0].max() <= 24
        assert (s.lip[body] != 0).all()  # DensePose only on the visible person
        assert (s.iuv[~body, 1:] == 0).all()
        assert body.sum() > 0.4 * (s.lip != 0).sum()
        inside = ~np.isnan(s.keypoints[:, 0])
        assert (s.keypoints[inside, 0] <= w - 1).all() and (s.keypoints[inside, 1] <= h - 1).all()


def test_pose_csv_writes_nan_for_joints_outside_the_image(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d", seed=0, train=40, val=2, image_size=48)
    rows = (tmp_path / "d" / "TrainVal_pose_annotations" / "lip_train_set.csv").read_text().splitlines()
    assert len(rows) == 40
    assert all(len(r.split(",")) == 49 and r.split(",")[0].endswith(".jpg") for r in rows)
    assert any("nan,nan,nan" in r for r in rows)  # partial crops leave some joints outside


def test_cli_synth_without_out_writes_both_param_datasets(tmp_path: Path, project_root: Path) -> None:
    sets = [
        f"synth.out={tmp_path / 'lip'}",
        f"synth.cross.out={tmp_path / 'atr'}",
        "synth.train=3",
        "synth.val=2",
        "synth.cross.count=4",
        "synth.image_size=32",
    ]
    cmd = [sys.executable, "-m", "pipeline.cli", "synth"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, cwd=project_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "lip" / "TrainVal_images" / "val_id.txt").read_text().split() == [
        "val_00000",
        "val_00001",
    ]
    assert len(list((tmp_path / "atr" / "humanparsing" / "JPEGImages").glob("*.jpg"))) == 4
    assert not list(tmp_path.glob(".*"))  # no temporary directories left behind
