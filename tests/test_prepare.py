"""`spd prepare`: letterbox geometry, the manifest, and every bad-data case under fail and skip."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from spd.config import SourceConfig
from spd.data.dataset import hflip_sample
from spd.data.imageio import encode_png
from spd.data.iuv import encode_iuv
from spd.data.packed import PackedSplit
from spd.data.prepare import prepare_sources
from spd.errors import DataError
from spd.labels import IGNORE, LIP_CLASSES

L = {n: i for i, n in enumerate(LIP_CLASSES)}


def _prepare(
    root: Path, out: Path, size: int = 64, bad_data: str = "fail", source: str = "synthetic"
) -> dict:
    src = SourceConfig(source=source, root=str(root), out=str(out))
    return prepare_sources([src], size, bad_data, progress=False)[str(out)]


def _one_sample_lip(root: Path, h: int, w: int, marker: tuple[int, int]) -> None:
    """A hand-made LIP official dataset: one odd-sized image per split, a 3x3 right-arm blob,
    a right-hand DensePose blob and the right wrist at `marker` (x, y)."""
    x, y = marker
    for split in ("train", "val"):
        img = np.full((h, w, 3), 90, np.uint8)
        parsing = np.zeros((h, w), np.uint8)
        parsing[y - 1 : y + 2, x - 1 : x + 2] = L["right_arm"]
        iuv = np.zeros((h, w, 3), np.uint8)
        iuv[y - 1 : y + 2, x - 1 : x + 2] = (3, 200, 100)  # 3 = right hand
        (root / "TrainVal_images" / f"{split}_images").mkdir(parents=True, exist_ok=True)
        (root / "TrainVal_parsing_annotations" / f"{split}_segmentations").mkdir(parents=True, exist_ok=True)
        (root / "TrainVal_iuv_annotations" / f"{split}_iuv").mkdir(parents=True, exist_ok=True)
        (root / "TrainVal_pose_annotations").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "TrainVal_images" / f"{split}_images" / "s0.jpg"), img)
        (root / "TrainVal_parsing_annotations" / f"{split}_segmentations" / "s0.png").write_bytes(
            encode_png(parsing)
        )
        (root / "TrainVal_iuv_annotations" / f"{split}_iuv" / "s0.png").write_bytes(encode_iuv(iuv))
        (root / "TrainVal_images" / f"{split}_id.txt").write_text("s0\n")
        joints = ["nan,nan,nan"] * 16
        joints[10] = f"{x},{y},1"  # r_wrist
        (root / "TrainVal_pose_annotations" / f"lip_{split}_set.csv").write_text(
            "s0.jpg," + ",".join(joints) + "\n"
        )


@pytest.mark.parametrize("h,w", [(37, 23), (23, 37)])
def test_keypoint_and_iuv_land_on_their_pixel_after_letterbox_and_flip(
    tmp_path: Path, h: int, w: int
) -> None:
    marker = (w // 2 + 3, h // 2 - 4)
    _one_sample_lip(tmp_path / "raw", h, w, marker)
    manifests = _prepare(tmp_path / "raw", tmp_path / "out", size=64)
    split = PackedSplit(tmp_path / "out" / "train")
    scale, pad_x, pad_y = manifests["train"]["transforms"][0]
    assert manifests["train"]["orig_sizes"] == [[h, w]]
    assert (pad_x > 0) == (w < h) and (pad_y > 0) == (h < w)
    kx, ky, v = split.keypoints[0, 10]
    assert v == 1 and split.keypoints[0, :10, 2].sum() == 0
    xi, yi = int(round(kx)), int(round(ky))
    assert split.parsing[0, yi, xi] == L["right_arm"]
    assert tuple(split.iuv[0, yi, xi]) == (3, 200, 100)
    # padding is ignore in both label maps
    assert split.parsing[0, 0, 0] == IGNORE and split.iuv[0, 0, 0, 0] == IGNORE
    assert split.has_pose[0] and split.has_iuv[0]

    image, parsing, iuv, kps = hflip_sample(
        split.images[0], split.parsing[0], split.iuv[0], split.keypoints[0], "lip"
    )
    fx, fy, fv = kps[15]  # the right wrist became the left wrist
    assert fv == 1 and kps[10, 2] == 0
    assert fx == pytest.approx(63 - kx) and fy == pytest.approx(ky)
    fxi, fyi = int(round(fx)), int(round(fy))
    assert parsing[fyi, fxi] == L["left_arm"]
    assert iuv[fyi, fxi, 0] == 4  # left hand
    assert np.array_equal(image, split.images[0][:, ::-1])


def test_manifest_describes_every_sample(prepared_tiny: Path) -> None:
    for split, n in (("train", 24), ("val", 8)):
        m = json.loads((prepared_tiny / split / "manifest.json").read_text())
        assert m["label_set"] == "lip" and m["num_classes"] == 20 and m["image_size"] == 64
        assert len(m["ids"]) == len(m["orig_sizes"]) == len(m["transforms"]) == len(m["has_pose"]) == n
        assert all(m["has_pose"]) and all(m["has_iuv"]) and m["skipped"] == []
        assert sum(m["class_histogram"].values()) > 0 and m["class_histogram"]["background"] > 0
        assert len(m["joint_visibility"]) == 16 and max(m["joint_visibility"]) <= n
        assert m["source"]["layout"] == "official"
        packed = PackedSplit(prepared_tiny / split)
        assert packed.images.shape == (n, 64, 64, 3) and packed.images.dtype == np.uint8
        assert packed.parsing.shape == (n, 64, 64) and packed.iuv.shape == (n, 64, 64, 3)
        assert packed.keypoints.shape == (n, 16, 3) and packed.keypoints.dtype == np.float32
        labelled = packed.parsing[packed.parsing != IGNORE]
        assert labelled.max() < 20
        dp = packed.iuv[..., 0]
        assert dp[dp != IGNORE].max() <= 24


def test_cross_dataset_is_atr_with_no_pose_or_iuv(prepared_cross_tiny: Path) -> None:
    val = PackedSplit(prepared_cross_tiny / "val")
    train = PackedSplit(prepared_cross_tiny / "train")
    assert val.label_set == "atr" and val.num_classes == 18 and len(val) == 20 and len(train) == 20
    assert not val.has_pose.any() and not val.has_iuv.any()
    assert (val.iuv[..., 0] == IGNORE).all()
    assert set(val.ids).isdisjoint(train.ids)


# ---------------------------------------------------------------------------------------------
# Bad data: each case breaks one file of a copy of the tiny synthetic dataset.
# ---------------------------------------------------------------------------------------------

IMG = "TrainVal_images/train_images/train_{:05d}.jpg"
SEG = "TrainVal_parsing_annotations/train_segmentations/train_{:05d}.png"
IDS = "TrainVal_images/train_id.txt"
CSV = "TrainVal_pose_annotations/lip_train_set.csv"


def _truncate(root: Path, rel: str) -> None:
    p = root / rel
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _garbage(root: Path, rel: str) -> None:
    (root / rel).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20 + b"IEND\xaeB`\x82")


def _resize_label(root: Path, rel: str) -> None:
    p = root / rel
    lbl = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    p.write_bytes(
        encode_png(cv2.resize(lbl, (lbl.shape[1] + 3, lbl.shape[0]), interpolation=cv2.INTER_NEAREST))
    )


def _out_of_range(root: Path, rel: str) -> None:
    p = root / rel
    lbl = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    lbl[0, 0] = 42
    p.write_bytes(encode_png(lbl))


def _edit_line(root: Path, rel: str, index: int, edit) -> None:
    p = root / rel
    lines = p.read_text().splitlines()
    lines[index] = edit(lines[index])
    p.write_text("\n".join(lines) + "\n")


BAD_CASES = {
    "truncated_jpeg": (lambda r: _truncate(r, IMG.format(2)), IMG.format(2), "truncated JPEG", True),
    "truncated_png": (lambda r: _truncate(r, SEG.format(3)), SEG.format(3), "truncated PNG", True),
    "corrupt_png": (lambda r: _garbage(r, SEG.format(4)), SEG.format(4), "not a readable label", True),
    "size_mismatch": (
        lambda r: _resize_label(r, SEG.format(5)),
        SEG.format(5),
        "differs from its image",
        True,
    ),
    "label_out_of_range": (
        lambda r: _out_of_range(r, SEG.format(6)),
        SEG.format(6),
        "label id 42 out of range",
        True,
    ),
    "no_parsing_file": (lambda r: (r / SEG.format(7)).unlink(), IMG.format(7), "no parsing file", True),
    "csv_field_count": (
        lambda r: _edit_line(r, CSV, 1, lambda s: s + ",7"),
        CSV + ":2",
        "50 fields; expected 49",
        False,
    ),
    "csv_non_numeric": (
        lambda r: _edit_line(r, CSV, 2, lambda s: s.replace(",", ",abc,", 1).rsplit(",", 1)[0]),
        CSV + ":3",
        "non-numeric pose value 'abc'",
        False,
    ),
    "duplicate_id": (
        lambda r: _edit_line(r, IDS, 8, lambda s: "train_00001"),
        IDS,
        "duplicate id 'train_00001'",
        True,
    ),
    "id_dotdot": (lambda r: _edit_line(r, IDS, 9, lambda s: ".."), IDS, "contains '..'", True),
    "id_with_slash": (
        lambda r: _edit_line(r, IDS, 10, lambda s: "sub/train_00010"),
        IDS,
        "path separator",
        True,
    ),
}


@pytest.fixture
def raw_copy(synth_lip_raw: Path, tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    shutil.copytree(synth_lip_raw, root)
    return root


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_data_fails_with_one_clear_error_and_no_output(raw_copy: Path, tmp_path: Path, case: str) -> None:
    breaker, rel, reason, _ = BAD_CASES[case]
    breaker(raw_copy)
    _truncate(raw_copy, IMG.format(0))  # a second bad file: the error must list both
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        _prepare(raw_copy, out, bad_data="fail")
    text = str(err.value)
    assert "2 bad file(s)" in text
    assert f"{raw_copy / rel}: " in text and reason in text
    assert str(raw_copy / IMG.format(0)) in text
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_data_is_skipped_and_listed_in_the_manifest(raw_copy: Path, tmp_path: Path, case: str) -> None:
    breaker, rel, reason, drops_sample = BAD_CASES[case]
    breaker(raw_copy)
    manifests = _prepare(raw_copy, tmp_path / "out", bad_data="skip")
    skipped = manifests["train"]["skipped"]
    assert [s for s in skipped if s["file"] == str(raw_copy / rel) and reason in s["reason"]], skipped
    train = PackedSplit(tmp_path / "out" / "train")
    if drops_sample:
        assert len(train) < 24
    else:  # a bad pose row drops the pose, not the image
        assert len(train) == 24 and train.has_pose.sum() == 23


def test_empty_split_is_an_error_under_both_policies(raw_copy: Path, tmp_path: Path) -> None:
    (raw_copy / "TrainVal_images" / "val_id.txt").write_text("")
    for policy in ("fail", "skip"):
        with pytest.raises(DataError, match="split 'val' is empty"):
            _prepare(raw_copy, tmp_path / "out", bad_data=policy)
        assert not (tmp_path / "out").exists()


def test_gray_rgba_palette_and_16bit_images_are_converted(raw_copy: Path, tmp_path: Path) -> None:
    from PIL import Image

    d = raw_copy / "TrainVal_images" / "train_images"
    rgb = [cv2.imread(str(d / f"train_{i:05d}.jpg"))[..., ::-1] for i in range(4)]
    Image.fromarray(rgb[0]).convert("L").save(d / "train_00000.jpg")  # grayscale JPEG
    (d / "train_00001.jpg").unlink()
    Image.fromarray(rgb[1]).convert("RGBA").save(d / "train_00001.png")  # RGBA PNG
    (d / "train_00002.jpg").unlink()
    Image.fromarray(rgb[2]).convert("P").save(d / "train_00002.png")  # palette PNG
    (d / "train_00003.jpg").unlink()
    cv2.imwrite(str(d / "train_00003.png"), rgb[3][..., ::-1].astype(np.uint16) * 257)  # 16-bit
    seg = raw_copy / SEG.format(4)  # a palette-mode label PNG keeps its indices
    lbl = cv2.imread(str(seg), cv2.IMREAD_UNCHANGED)
    pal = Image.fromarray(lbl, mode="L").convert("P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    Image.fromarray(lbl).save(seg)
    manifests = _prepare(raw_copy, tmp_path / "out", bad_data="fail")
    assert manifests["train"]["skipped"] == [] and manifests["train"]["num_samples"] == 24
    packed = PackedSplit(tmp_path / "out" / "train")
    img0 = packed.images[0]
    assert (img0[..., 0] == img0[..., 1]).all()  # gray became 3 equal channels
    assert packed.images[3].std() > 10  # the 16-bit image kept its content


def test_cli_reports_bad_data_without_traceback(raw_copy: Path, tmp_path: Path, project_root: Path) -> None:
    _truncate(raw_copy, IMG.format(1))
    params = tmp_path / "params.yaml"
    params.write_text((project_root / "params.yaml").read_text())
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "prepare",
        "--params",
        str(params),
        "--no-progress",
        "--set",
        f"prepare.main.root={raw_copy}",
        "--set",
        f"prepare.main.out={out}",
        "--set",
        "prepare.cross=null",
        "--set",
        "prepare.image_size=64",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=project_root, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{raw_copy / IMG.format(1)}: truncated JPEG" in proc.stderr
    assert not out.exists()
    proc = subprocess.run(
        cmd + ["--set", "prepare.bad_data=skip"],
        capture_output=True,
        text=True,
        cwd=project_root,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 bad file(s)" in proc.stdout and "truncated JPEG" in proc.stdout
    assert len(PackedSplit(out / "train")) == 23
