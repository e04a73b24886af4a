"""The registered model: an MLflow pyfunc around `spd.predict.Predictor`, and its input rules.

What a registry consumer sends (`mlflow.pyfunc.load_model("models:/<name>@champion").predict(x)`):
- one image: a uint8/uint16 array (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA
  -> one (H, W) uint8 label map;
- a batch: a list of such arrays (any sizes) -> a list of label maps, or a 4-D array (B, H, W, C)
  -> a (B, H, W) array;
- a DataFrame with a column `image` of encoded image bytes (PNG/JPEG/...; base64 strings are
  accepted, which is how JSON carries them, e.g. `mlflow models serve`'s `dataframe_split`)
  -> a DataFrame with `mask` (single-channel PNG whose pixel values are class ids), `height`, `width`.
Images above `max_pixels` (recorded in the model's `serving_config` artifact) and bytes that are not
an image raise an MlflowException with INVALID_PARAMETER_VALUE: the REST server answers 400 with
the message instead of crashing a worker.

The model ships its own code (`spd` and this module, via `code_paths`), so a consumer needs only
the pinned pip requirements, not this project. MLflow is imported at module level because this
module *is* the MLflow model; only `spd register` and `spd predict` (for `models:/` URIs) import it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModelContext
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from spd.data.imageio import check_complete
from spd.errors import DataError

MODEL_CODE = Path(__file__).with_name("serving_model.py")  # the "model from code" file MLflow runs
MODEL_FILE = "model_file"  # artifact key: the spd model file (train.model_out)
SERVING_CONFIG = "serving_config"  # artifact key: JSON with max_pixels, flip_tta, backend, classes
IMAGE_COLUMN = "image"
CONFIG_FORMAT = "spd-serving/1"
PREDICT_CHUNK = 8  # images per forward pass: bounds memory for long lists

# What the served model needs at run time, pinned to the versions it was registered with.
# torch's local tag (+cu130, +cpu) is dropped: it names a wheel index, not a release.
logger = logging.getLogger(__name__)
# onnxruntime and onnx: the served model's default backend (auto) exports to and runs on them.
PINNED_PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "opencv-python-headless",
    "mlflow",
    "pyyaml",
    "pandas",
    "onnxruntime",
    "onnx",
)


@dataclass(frozen=True)
class ServingOptions:
    """What the serving config records besides the model: request limits and defaults, where the
    model runs, and where it came from (shown to consumers)."""

    max_pixels: int
    flip_tta: bool = False
    device: str = "auto"  # auto: CUDA where present, else CPU
    torch_threads: int | None = None  # torch intra-op threads per server process; None: torch's
    backend: str = "auto"  # the network's runtime (spd.backends): auto (ONNX Runtime on CPU), torch, onnx
    model_name: str | None = None
    training_data: Mapping[str, Any] = field(default_factory=dict)  # source, root, label_set


# ---------------------------------------------------------------------------------------------
# Input decoding and validation.
# ---------------------------------------------------------------------------------------------


def encoded_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, without decoding; None for other formats.

    Lets an oversized image be refused before its pixels are allocated (a small file can
    decompress to gigabytes).
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            i += 2 + length
    return None


def decode_image(data: bytes | str, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Encoded image bytes (or their base64 text) -> (H, W) or (H, W, C) array in RGB(A) order."""
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{name}: not an image (expected encoded image bytes or base64 text)") from None
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise DataError(f"{name}: not an image (expected encoded image bytes, got {type(data).__name__})")
    data = bytes(data)
    size = encoded_size(data) if max_pixels is not None else None
    if size is not None and size[0] * size[1] > max_pixels:
        w, h = size
        raise DataError(f"{name}: {w}x{h} = {w * h} pixels is above the limit of {max_pixels}")
    check_complete(data, Path(name))  # libjpeg decodes a cut-off JPEG without complaint
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{name}: not an image (cannot decode {len(data)} bytes as PNG/JPEG/...)")
    if image.ndim == 3 and image.shape[2] == 2:  # gray + alpha
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def check_image(image: Any, max_pixels: int, name: str) -> np.ndarray:
    """Reject what the predictor cannot take, with a message naming the input."""
    if not isinstance(image, np.ndarray):
        raise DataError(f"{name}: expected an image array, got {type(image).__name__}")
    if image.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{name}: expected a uint8 or uint16 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise DataError(f"{name}: expected shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise DataError(f"{name}: empty image {image.shape}")
    if h * w > max_pixels:
        raise DataError(f"{name}: {w}x{h} = {h * w} pixels is above the limit of {max_pixels}")
    return image


def split_input(model_input: Any, max_pixels: int) -> tuple[list[np.ndarray], str]:
    """Any accepted input form -> (validated images, form) with form in single/stack/list/frame."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise DataError(f"expected a DataFrame column {IMAGE_COLUMN!r}, got {list(model_input.columns)}")
        images = [
            check_image(decode_image(v, f"image[{i}]", max_pixels), max_pixels, f"image[{i}]")
            for i, v in enumerate(model_input[IMAGE_COLUMN].tolist())
        ]
        return images, "frame"
    if isinstance(model_input, np.ndarray):
        if model_input.ndim == 4:
            return [check_image(im, max_pixels, f"image[{i}]") for i, im in enumerate(model_input)], "stack"
        return [check_image(model_input, max_pixels, "image")], "single"
    if isinstance(model_input, (list, tuple)):
        return [
            check_image(np.asarray(im), max_pixels, f"image[{i}]") for i, im in enumerate(model_input)
        ], "list"
    raise DataError(
        f"expected an image array, a list of them or a DataFrame with column {IMAGE_COLUMN!r}, "
        f"got {type(model_input).__name__}"
    )


def encode_mask(label_map: np.ndarray) -> bytes:
    """(H, W) uint8 class ids -> PNG bytes (lossless; pixel value = class id)."""
    ok, png = cv2.imencode(".png", label_map)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 2-D array
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


# ---------------------------------------------------------------------------------------------
# The pyfunc model.
# ---------------------------------------------------------------------------------------------


class SpdSegmenter(mlflow.pyfunc.PythonModel):
    """Human parsing for any image size: returns class-id label maps at each input's own size.

    Thread-safe: the scoring server runs requests on several threads at once, so nothing is written
    after `load_context`; a request's options (params.flip_tta) travel with its call.
    """

    def load_context(self, context: PythonModelContext) -> None:
        from spd.predict import Predictor, training_data_note

        config = json.loads(Path(context.artifacts[SERVING_CONFIG]).read_text())
        self.max_pixels = int(config["max_pixels"])
        self.flip_tta = bool(config["flip_tta"])
        overrides = context.model_config or {}  # mlflow.pyfunc.load_model(..., model_config=...)
        device = overrides.get("device") or config.get("device", "auto")
        threads = overrides.get("torch_threads", config.get("torch_threads"))
        if threads:  # process-wide, set once at load: the scoring server's knob, not a request's
            torch.set_num_threads(int(threads))
        backend = overrides.get("backend") or config.get("backend", "auto")  # older configs: auto
        self.predictor = Predictor.from_file(context.artifacts[MODEL_FILE], device=device, backend=backend)
        note = training_data_note(config.get("training_data", {}), config.get("model_name", "this model"))
        if note:
            logger.warning(note)

    # MLflow validates and converts inputs by the type hint, except for a DataFrame hint: the other
    # accepted forms (arrays, lists of arrays; module docstring) then reach split_input unchanged.
    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame | np.ndarray | list[np.ndarray]:
        flip_tta = bool((params or {}).get("flip_tta", self.flip_tta))
        try:
            images, form = split_input(model_input, self.max_pixels)
        except DataError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        maps = []
        for i in range(0, len(images), PREDICT_CHUNK):
            chunk = images[i : i + PREDICT_CHUNK]
            maps += [p.labels for p in self.predictor.predict_batch(chunk, iuv=False, flip_tta=flip_tta)]
        if form == "single":
            return maps[0]
        if form == "stack":
            return np.stack(maps)
        if form == "list":
            return maps
        return pd.DataFrame(
            {
                "mask": [encode_mask(m) for m in maps],
                "height": [m.shape[0] for m in maps],
                "width": [m.shape[1] for m in maps],
            }
        )


# ---------------------------------------------------------------------------------------------
# What `spd register` logs alongside the model.
# ---------------------------------------------------------------------------------------------


def signature(flip_tta: bool) -> ModelSignature:
    """Outputs and params only: the input is deliberately unenforced.

    A column schema would make MLflow coerce every input into a DataFrame before our code sees it,
    which rejects plain (H, W, 3) arrays and batches of different sizes; the accepted input forms
    are documented in this module, the README and the input example, and validated in `predict`.
    """
    outputs = Schema([ColSpec("binary", "mask"), ColSpec("long", "height"), ColSpec("long", "width")])
    params = ParamSchema([ParamSpec("flip_tta", "boolean", flip_tta)])
    return ModelSignature(inputs=None, outputs=outputs, params=params)


def input_example(size: int = 32) -> pd.DataFrame:
    """A small encoded RGB image in the DataFrame form (base64 text, as JSON carries it)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", image)
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(png.tobytes()).decode("ascii")]})


def pip_requirements() -> list[str]:
    reqs = []
    for name in PINNED_PACKAGES:
        version = metadata.version(name).split("+")[0]
        reqs.append(f"{name}=={version}")
    return reqs


def write_serving_config(path: Path, model_file: Path, options: ServingOptions) -> None:
    import torch

    from spd.labels import LABEL_SETS

    meta = torch.load(model_file, map_location="cpu", weights_only=True)
    label_set = meta.get("label_set", "lip")
    config = {
        "format": CONFIG_FORMAT,
        "max_pixels": options.max_pixels,
        "flip_tta": options.flip_tta,
        "device": options.device,
        "torch_threads": options.torch_threads,
        "backend": options.backend,
        "label_set": label_set,
        "classes": list(LABEL_SETS[label_set]),
        "image_size": meta.get("image_size"),
        "model": meta.get("model"),
        "model_name": options.model_name,
        "training_data": dict(options.training_data),
    }
    path.write_text(json.dumps(config, indent=2) + "\n")


def stage_code(dest: Path) -> list[str]:
    """Copy what the model imports (the `spd` package and this module) into `dest`; code_paths."""
    root = Path(__file__).resolve().parent.parent
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(root / "spd", dest / "spd", ignore=ignore)
    (dest / "pipeline").mkdir()
    (dest / "pipeline" / "__init__.py").write_text('"""Only the serving module ships with the model."""\n')
    shutil.copy2(Path(__file__), dest / "pipeline" / "serving.py")
    return [str(dest / "spd"), str(dest / "pipeline")]


def log_pyfunc(model_file: Path, options: ServingOptions) -> Any:
    """Log the model in the active MLflow run, registered as options.model_name unless None;
    returns the ModelInfo.

    Logged as an MLflow "model from code": MLflow stores MODEL_CODE (which builds an SpdSegmenter)
    and runs it when loading, so no Python object is pickled and the model loads with any
    cloudpickle version.
    """
    with tempfile.TemporaryDirectory(prefix="spd-serving-") as tmp:
        tmp_path = Path(tmp)
        config_path = tmp_path / "serving.json"
        write_serving_config(config_path, model_file, options)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={MODEL_FILE: str(model_file), SERVING_CONFIG: str(config_path)},
            code_paths=stage_code(tmp_path / "code"),
            signature=signature(options.flip_tta),
            input_example=input_example(),
            pip_requirements=pip_requirements(),
            # MLflow applies a load's model_config only to keys logged here: these may be overridden.
            model_config={
                "device": options.device,
                "torch_threads": options.torch_threads,
                "backend": options.backend,
            },
            registered_model_name=options.model_name,
        )
