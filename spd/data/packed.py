"""Packed arrays: one directory per split, memory-mapped by everything that trains or evaluates.

Layout (docs/ARCHITECTURE.md): images.npy uint8 (N, S, S, 3) RGB; parsing.npy uint8 (N, S, S)
(255 = ignore); iuv.npy uint8 (N, S, S, 3) I, U*255, V*255 (I = 255: no label); keypoints.npy
float32 (N, 16, 3) x, y, v in packed pixels; has_pose.npy, has_iuv.npy bool (N,); manifest.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from spd.errors import DataError
from spd.labels import NUM_JOINTS

ARRAYS = ("images", "parsing", "iuv", "keypoints", "has_pose", "has_iuv")


def array_specs(n: int, size: int) -> dict[str, tuple[tuple[int, ...], type]]:
    return {
        "images": ((n, size, size, 3), np.uint8),
        "parsing": ((n, size, size), np.uint8),
        "iuv": ((n, size, size, 3), np.uint8),
        "keypoints": ((n, NUM_JOINTS, 3), np.float32),
        "has_pose": ((n,), np.bool_),
        "has_iuv": ((n,), np.bool_),
    }


class PackedWriter:
    """Writes a split's arrays straight to disk (np.lib.format.open_memmap), so a split larger than
    memory can be packed; `close(n)` trims the arrays to the first n rows (skipped samples)."""

    def __init__(self, split_dir: Path, capacity: int, size: int) -> None:
        self.dir = split_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        specs = array_specs(capacity, size).items()
        if capacity == 0:  # mmap cannot map an empty file
            self.arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in specs}
        else:
            self.arrays = {
                name: np.lib.format.open_memmap(self.dir / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
                for name, (shape, dtype) in specs
            }

    def put(self, k: int, **rows: np.ndarray | bool) -> None:
        for name, value in rows.items():
            self.arrays[name][k] = value

    def close(self, n: int, manifest: dict[str, Any]) -> None:
        for name, arr in self.arrays.items():
            if isinstance(arr, np.memmap):
                arr.flush()
            if n != self.capacity or not isinstance(arr, np.memmap):
                trimmed = np.array(arr[:n])
                del arr
                np.save(self.dir / f"{name}.npy", trimmed)
        self.arrays = {}
        (self.dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


class PackedSplit:
    """A packed split directory, memory-mapped (read-only). Arrays are attributes by name."""

    def __init__(self, split_dir: str | Path) -> None:
        self.dir = Path(split_dir)
        manifest_path = self.dir / "manifest.json"
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise DataError(f"{self.dir}: not a packed split (no manifest.json; run `spd prepare`)") from None
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{manifest_path}: unreadable manifest ({e})") from None
        for name in ARRAYS:
            try:
                arr = np.load(self.dir / f"{name}.npy", mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"{self.dir / (name + '.npy')}: cannot load packed array ({e})") from None
            setattr(self, name, arr)
        n = len(self.manifest["ids"])
        for name in ARRAYS:
            if len(getattr(self, name)) != n:
                raise DataError(f"{self.dir}: {name}.npy has {len(getattr(self, name))} rows, manifest {n}")

    images: np.ndarray  # (N, S, S, 3) uint8
    parsing: np.ndarray  # (N, S, S) uint8
    iuv: np.ndarray  # (N, S, S, 3) uint8
    keypoints: np.ndarray  # (N, 16, 3) float32
    has_pose: np.ndarray  # (N,) bool
    has_iuv: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.manifest["ids"])

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its data: send the path and re-map in the receiving process
        # (DataLoader workers under spawn, Ray workers).
        return {"dir": str(self.dir)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["dir"])

    @property
    def ids(self) -> list[str]:
        return self.manifest["ids"]

    @property
    def label_set(self) -> str:
        return self.manifest["label_set"]

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    def __repr__(self) -> str:
        return f"PackedSplit({str(self.dir)!r}, n={len(self)}, label_set={self.label_set!r})"
