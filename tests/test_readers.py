"""Readers: LIP official vs flattened layouts, pose CSV, image modes, IUV placement, ATR split."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from spd.config import SourceConfig
from spd.data.atr import read_atr
from spd.data.imageio import read_image, read_label
from spd.data.iuv import encode_iuv, read_iuv
from spd.data.lip import detect_lip_layout, id_problem, read_lip_split, read_pose_csv
from spd.data.packed import ARRAYS, PackedSplit
from spd.data.prepare import prepare_sources
from spd.errors import DataError


def _flatten(official: Path, flat: Path) -> None:
    """The layout many PyTorch projects use: {split}_images/, {split}_segmentations/, {split}_id.txt."""
    flat.mkdir()
    for split in ("train", "val"):
        shutil.copytree(official / "TrainVal_images" / f"{split}_images", flat / f"{split}_images")
        shutil.copytree(
            official / "TrainVal_parsing_annotations" / f"{split}_segmentations",
            flat / f"{split}_segmentations",
        )
        shutil.copy(official / "TrainVal_images" / f"{split}_id.txt", flat / f"{split}_id.txt")
        shutil.copy(
            official / "TrainVal_pose_annotations" / f"lip_{split}_set.csv", flat / f"lip_{split}_set.csv"
        )
    shutil.copytree(official / "TrainVal_iuv_annotations", flat / "iuv")


def test_official_and_flattened_layouts_pack_to_the_same_arrays(synth_lip_raw: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    _flatten(synth_lip_raw, flat)
    assert detect_lip_layout(synth_lip_raw) == "official" and detect_lip_layout(flat) == "flattened"
    prepare_sources(
        [
            SourceConfig(root=str(synth_lip_raw), out=str(tmp_path / "a")),
            SourceConfig(root=str(flat), iuv_root=str(flat / "iuv"), out=str(tmp_path / "b")),
        ],
        64,
        progress=False,
    )
    for split in ("train", "val"):
        a, b = PackedSplit(tmp_path / "a" / split), PackedSplit(tmp_path / "b" / split)
        assert a.ids == b.ids and len(a) > 0
        for name in ARRAYS:
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert a.has_iuv.all() and a.has_pose.all()


def test_a_sample_without_an_iuv_file_has_no_densepose_label(synth_lip_raw: Path, tmp_path: Path) -> None:
    root = tmp_path / "raw"
    shutil.copytree(synth_lip_raw, root)
    (root / "TrainVal_iuv_annotations" / "val_iuv" / "val_00002.png").unlink()
    split = read_lip_split(root, "val")
    by_id = {s.id: s for s in split.samples}
    assert by_id["val_00002"].iuv is None and by_id["val_00003"].iuv is not None
    prepare_sources([SourceConfig(root=str(root), out=str(tmp_path / "out"))], 64, progress=False)
    val = PackedSplit(tmp_path / "out" / "val")
    k = val.ids.index("val_00002")
    assert not val.has_iuv[k] and val.has_iuv.sum() == len(val) - 1
    assert (val.iuv[k, ..., 0] == 255).all()


def test_pose_csv_reads_nan_as_missing_and_reports_bad_rows(tmp_path: Path) -> None:
    good = ["a.jpg"] + ["1.5", "2", "1"] * 15 + ["nan", "nan", "nan"]
    csv = tmp_path / "pose.csv"
    csv.write_text(
        ",".join(good) + "\n" + ",".join(good[:10]) + "\n" + ",".join(["b.jpg"] + ["x"] * 48) + "\n"
    )
    poses, problems = read_pose_csv(csv)
    assert list(poses) == ["a"]
    assert poses["a"].shape == (16, 3) and np.isnan(poses["a"][15]).all()
    assert poses["a"][0].tolist() == [1.5, 2.0, 1.0]
    assert [(p.file, p.reason.split(";")[0]) for p in problems] == [
        (f"{csv}:2", "pose row has 10 fields"),
        (f"{csv}:3", "non-numeric pose value 'x'"),
    ]


def test_image_modes_are_converted_to_rgb(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    cv2.imwrite(str(tmp_path / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "deep.png"), rgb)
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == (9, 7, 3) and np.array_equal(gray[..., 2], rgb[..., 0])
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (9, 7, 3)


def test_label_pngs_keep_their_class_ids_in_any_mode(tmp_path: Path) -> None:
    from PIL import Image

    ids = np.random.default_rng(1).integers(0, 20, (6, 5), dtype=np.uint8)
    pal = Image.fromarray(ids).convert("P")
    pal.putpalette([c for i in range(256) for c in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    Image.fromarray(ids, mode="L").save(tmp_path / "l.png")
    im = Image.new("P", (5, 6))
    im.putdata(ids.ravel().tolist())
    im.putpalette([c for i in range(256) for c in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    im.save(tmp_path / "p.png")
    cv2.imwrite(str(tmp_path / "deep.png"), ids.astype(np.uint16))
    cv2.imwrite(str(tmp_path / "rgb.png"), np.repeat(ids[..., None], 3, 2))
    for name in ("l", "p", "deep", "rgb"):
        assert np.array_equal(read_label(tmp_path / f"{name}.png"), ids), name
    colour = np.zeros((6, 5, 3), np.uint8)
    colour[0, 0] = (1, 2, 3)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(DataError, match="colour label image"):
        read_label(tmp_path / "colour.png")


def test_iuv_png_round_trip_and_range_check(tmp_path: Path) -> None:
    iuv = np.zeros((4, 5, 3), np.uint8)
    iuv[1, 2] = (24, 10, 250)
    (tmp_path / "a.png").write_bytes(encode_iuv(iuv))
    assert np.array_equal(read_iuv(tmp_path / "a.png"), iuv)
    assert cv2.imread(str(tmp_path / "a.png"))[1, 2, 0] == 24  # DensePose convention: cv2 channel 0 = I
    iuv[0, 0, 0] = 25
    (tmp_path / "b.png").write_bytes(encode_iuv(iuv))
    with pytest.raises(DataError, match="part index 25 out of range"):
        read_iuv(tmp_path / "b.png")


def test_ids_with_separators_or_dotdot_are_rejected() -> None:
    assert id_problem("100034_483681") is None
    for bad in ("a/b", "a\\b", "..", "../x", ""):
        assert id_problem(bad), bad


def test_atr_split_is_seeded_disjoint_and_sized_by_val_fraction(tmp_path: Path) -> None:
    from spd.data.synth import write_dataset

    write_dataset(tmp_path / "atr", seed=0, layout="atr", domain="shifted", count=20, image_size=32)
    a = read_atr(tmp_path / "atr", val_fraction=0.25, split_seed=1)
    b = read_atr(tmp_path / "atr", val_fraction=0.25, split_seed=1)
    c = read_atr(tmp_path / "atr", val_fraction=0.25, split_seed=2)
    ids = {k: [s.id for s in v.samples] for k, v in a.items()}
    assert len(ids["val"]) == 5 and len(ids["train"]) == 15 and not set(ids["val"]) & set(ids["train"])
    assert ids == {k: [s.id for s in v.samples] for k, v in b.items()}
    assert ids["val"] != [s.id for s in c["val"].samples]
    assert all(s.keypoints is None and s.iuv is None for s in a["train"].samples)


def test_missing_root_and_unknown_layout_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset root not found"):
        prepare_sources(
            [SourceConfig(root=str(tmp_path / "nope"), out=str(tmp_path / "o"))], 64, progress=False
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a LIP dataset"):
        prepare_sources(
            [SourceConfig(root=str(tmp_path / "empty"), out=str(tmp_path / "o"))], 64, progress=False
        )
