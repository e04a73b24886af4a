"""`spd predict IMAGE_OR_DIR... --model (PATH | models:/NAME@ALIAS) --out DIR`.

For every image: `<stem>_mask.png` (palette colours), `<stem>_overlay.png` (mask blended over the
image, joints drawn when the model has a pose head), and on request `<stem>_joints.json` and
`<stem>_iuv.png` (DensePose I, U*255, V*255 in the training IUV files' convention).
Directories contribute their image files (sorted). A file that cannot be read or
decoded is reported and skipped; the others are still processed, and the command then exits
non-zero naming every bad file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.config import Params
from spd.errors import DataError, SpdError
from spd.io import atomic_write_bytes, atomic_write_json
from spd.labels import LIP_JOINTS, SKELETON, palette

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or directories")
    parser.add_argument("--model", required=True, help="model file, or a registry URI models:/NAME@ALIAS")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--joints", action="store_true", help="also write <stem>_joints.json")
    parser.add_argument("--iuv", action="store_true", help="also write <stem>_iuv.png (DensePose I, U, V)")
    parser.add_argument("--flip-tta", action="store_true", help="average with the mirrored image")
    parser.add_argument("--device", default="auto", help="auto (CUDA where present, else CPU), cpu, cuda[:N]")
    add_backend_argument(parser, "what runs the network")


def add_backend_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--backend (spd.backends), for `spd predict` and the served model of `spd register`."""
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx"],
        help=f"{what}: onnx (ONNX Runtime, CPU only, the model exported at load), torch, "
        "or auto (onnx on the CPU where onnxruntime is installed, else torch)",
    )


# ---------------------------------------------------------------------------------------------
# Drawing (shared with `spd evaluate`'s overlay sheet).
# ---------------------------------------------------------------------------------------------


def colorize(label_map: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) RGB palette colours (255, ignore, stays white-ish per palette)."""
    return palette(256)[label_map]


def blend(image_rgb: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    colour = colorize(label_map).astype(np.float32)
    out = image_rgb.astype(np.float32)
    fg = label_map > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colour[fg]
    return out.astype(np.uint8)


def draw_joints(image_rgb: np.ndarray, joints: np.ndarray, min_score: float = 0.0) -> np.ndarray:
    """Skeleton and joint dots for (J, 3) x, y, score (or v) in image pixels."""
    out = np.ascontiguousarray(image_rgb.copy())
    radius = max(1, round(max(out.shape[:2]) / 100))
    ok = np.isfinite(joints[:, :2]).all(1) & (joints[:, 2] > min_score)
    for a, b in SKELETON:
        if ok[a] and ok[b]:
            pa, pb = tuple(int(round(v)) for v in joints[a, :2]), tuple(int(round(v)) for v in joints[b, :2])
            cv2.line(out, pa, pb, (255, 255, 0), max(1, radius // 2), cv2.LINE_AA)
    for j in np.flatnonzero(ok):
        cv2.circle(out, tuple(int(round(v)) for v in joints[j, :2]), radius, (255, 0, 0), -1, cv2.LINE_AA)
    return out


def encode_png(image_rgb_or_gray: np.ndarray) -> bytes:
    img = image_rgb_or_gray
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


# ---------------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------------


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given; directories expanded to their image files (recursively, sorted)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SpdError(f"{p}: directory holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise SpdError(f"{p}: no such file or directory")
    return files


def load_predictor(
    model: str, params: Params, root: Path, device: str = "auto", backend: str = "auto"
) -> Any:
    """A local model file, or the model behind a registry URI (`models:/NAME@ALIAS`, `runs:/...`)."""
    from spd.predict import Predictor

    if "://" not in model and not model.startswith("models:/"):
        path = Path(model)
        if not path.is_file():
            raise SpdError(f"--model {model}: no such model file (or use models:/NAME@ALIAS)")
        return Predictor.from_file(path, device=device, backend=backend)
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline import runtime

    uri = runtime.tracking_uri(params.mlflow, root)
    runtime.check_tracking_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:  # the serving config's device and backend, overridden through MLflow's model_config
        pyfunc = mlflow.pyfunc.load_model(model, model_config={"device": device, "backend": backend})
    except MlflowException as e:
        raise SpdError(f"--model {model}: cannot load from {uri} ({e.message.splitlines()[0]})") from None
    wrapped = pyfunc.unwrap_python_model()
    if not hasattr(wrapped, "predictor"):
        raise SpdError(f"--model {model}: not an SPD model (no predictor in the pyfunc)")
    return wrapped.predictor


def note_synthetic_training(model: str, params: Params, root: Path) -> None:
    """One line on stderr when the model learnt from synthetic figures only. A registry model says so
    itself when loaded (its serving config records its training data); a local file is judged only
    when it is this project's train.model_out, trained on prepare.main."""
    from pipeline import runtime
    from spd.predict import training_data_note

    if "://" in model or model.startswith("models:/"):
        return
    if Path(model).resolve() == Path(runtime.resolve_path(root, params.train.model_out)).resolve():
        main = params.prepare.main
        note = training_data_note({"source": main.source, "root": main.root}, model)
        if note:
            print(note, file=sys.stderr)


def unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 2
    while stem in used:
        stem, n = f"{path.stem}-{n}", n + 1
    used.add(stem)
    return stem


def predict_one(predictor: Any, path: Path, out: Path, stem: str, args: argparse.Namespace) -> None:
    from spd.data.imageio import read_image

    image = read_image(path)  # (H, W, 3) uint8 RGB; DataError naming the file if unreadable
    pred = predictor.predict(image, iuv=args.iuv, flip_tta=args.flip_tta)
    overlay = blend(image, pred.labels)
    if pred.joints is not None:
        overlay = draw_joints(overlay, pred.joints, min_score=0.05)
    atomic_write_bytes(out / f"{stem}_mask.png", encode_png(colorize(pred.labels)))
    atomic_write_bytes(out / f"{stem}_overlay.png", encode_png(overlay))
    if args.joints:
        joints = [
            {"joint": name, "x": float(x), "y": float(y), "score": float(s)}
            for name, (x, y, s) in zip(LIP_JOINTS, pred.joints.tolist())
        ]
        atomic_write_json(out / f"{stem}_joints.json", {"image": str(path), "joints": joints})
    if args.iuv:
        # Like DensePose's dumps: the array (I, U, V) goes to cv2 as is, so I is the first channel cv2
        # reads back (spd.data.iuv.read_iuv reads these files).
        ok, buf = cv2.imencode(".png", iuv_to_uint8(pred.iuv))
        atomic_write_bytes(out / f"{stem}_iuv.png", buf.tobytes())


def iuv_to_uint8(iuv: np.ndarray) -> np.ndarray:
    """(H, W, 3) I, U, V (U, V in [0, 1], or already uint8 x255) -> uint8 I, U*255, V*255."""
    if iuv.dtype == np.uint8:
        return iuv
    out = np.empty(iuv.shape, dtype=np.uint8)
    out[..., 0] = iuv[..., 0].astype(np.uint8)
    out[..., 1:] = np.clip(np.rint(iuv[..., 1:] * 255.0), 0, 255).astype(np.uint8)
    return out


def run(params: Params, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline import runtime

    files = collect_images(args.inputs)
    root = runtime.project_root(args.params)
    predictor = load_predictor(args.model, params, root, args.device, args.backend)
    note_synthetic_training(args.model, params, root)
    if args.joints and "pose" not in predictor.tasks:
        raise SpdError(f"--joints: model {args.model} has no pose head (tasks {list(predictor.tasks)})")
    if args.iuv and "densepose" not in predictor.tasks:
        raise SpdError(f"--iuv: model {args.model} has no DensePose head (tasks {list(predictor.tasks)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bad: list[tuple[Path, str]] = []
    used: set[str] = set()
    for path in tqdm(files, desc="spd predict", unit="img", file=sys.stderr):
        try:
            predict_one(predictor, path, out, unique_stem(path, used), args)
        except DataError as e:
            bad.append((path, str(e)))
            tqdm.write(f"spd predict: skipped {e}", file=sys.stderr)
    done = len(files) - len(bad)
    print(f"wrote predictions for {done} of {len(files)} images to {out}")
    if bad:
        names = ", ".join(str(p) for p, _ in bad)
        raise DataError(f"{len(bad)} unreadable image(s) skipped: {names}")
    return 0
