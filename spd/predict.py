"""Image(s) of any size and mode -> label map at the input's own size (+ joints, IUV).

Used by `spd predict`, `spd evaluate` and the MLflow pyfunc. Images are letterboxed to the model's
`image_size` exactly as `spd prepare` packs them (aspect-preserving resize, centred padding), run
under torch.inference_mode (bf16 autocast where the device supports it) and mapped back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spd.data.letterbox import Letterbox, letterbox_image, letterbox_params
from spd.data.targets import decode_heatmaps
from spd.errors import SpdError
from spd.model.spd import load_model_file
from spd.precision import autocast_dtype
from spd.tta import flip_average

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_CHUNK_PIXELS = 1 << 20  # upsample logits in row bands of about this many output pixels


@dataclass
class Prediction:
    labels: np.ndarray  # (H, W) uint8 class ids at the input's size
    joints: np.ndarray | None  # (16, 3) float32 x, y (input pixels), score; None without pose head
    iuv: np.ndarray | None  # (H, W, 3) uint8 I, U*255, V*255; None without DensePose head


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, packed exactly as `spd prepare` does."""
    lb = letterbox_params(image.shape[0], image.shape[1], size)
    return letterbox_image(image, size, lb), lb


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Grayscale (H, W) / (H, W, 1), RGB, RGBA; uint8 or uint16 -> (H, W, 3) uint8 RGB."""
    if not isinstance(image, np.ndarray):
        raise SpdError(f"image: expected a numpy array, got {type(image).__name__}")
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise SpdError(f"image: expected dtype uint8 or uint16, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim != 3 or image.shape[2] not in (3, 4):
        raise SpdError(
            f"image: expected shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {tuple(image.shape)}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise SpdError(f"image: empty image of shape {tuple(image.shape)}")
    return np.ascontiguousarray(image[..., :3])


def _upsample_rows(x: torch.Tensor, out_h: int, out_w: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Bilinear (align_corners=False) upsampling of (C, h, w) to (C, out_h, out_w), in row bands.

    Yields (row0, band (C, rows, out_w)); the same maths as F.interpolate, without materialising
    all of a 3000 x 2000 x C float map at once.
    """
    C, h, w = x.shape
    xs = (torch.arange(out_w, dtype=torch.float32) + 0.5) / out_w * 2 - 1
    rows = max(1, _CHUNK_PIXELS // max(out_w, 1))
    for r0 in range(0, out_h, rows):
        r1 = min(out_h, r0 + rows)
        ys = (torch.arange(r0, r1, dtype=torch.float32) + 0.5) / out_h * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None].to(x.device)
        band = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
        yield r0, band[0]


class Predictor:
    """Predictor(model, info, device='cpu', flip_tta=False); info as returned by load_model_file."""

    def __init__(
        self, model: nn.Module, info: dict, device: str | torch.device = "cpu", flip_tta: bool = False
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.image_size = int(info["image_size"])
        self.num_classes = int(info["num_classes"])
        self.label_set = str(info.get("label_set", "lip"))
        self.tasks = tuple(getattr(model, "tasks", ("seg",)))
        self.flip_tta = flip_tta
        self.autocast_dtype = autocast_dtype("auto", self.device)

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu", flip_tta: bool = False) -> Predictor:
        model, info = load_model_file(path)
        return cls(model, info, device=device, flip_tta=flip_tta)

    from_checkpoint = from_file

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else torch.autocast(self.device.type, enabled=False)
        )
        with ctx:
            out = self.model(x.contiguous(memory_format=torch.channels_last))
        return {k: v.float() for k, v in out.items()}

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs (B, ., h, w); with flip TTA averaged with the mirrored pass (spd.tta)."""
        return flip_average(self._run, x, self.label_set) if self.flip_tta else self._run(x)

    @torch.inference_mode()
    def predict(self, image: np.ndarray, *, iuv: bool = True) -> Prediction:
        return self.predict_batch([image], iuv=iuv)[0]

    @torch.inference_mode()
    def predict_batch(self, images: list[np.ndarray], *, iuv: bool = True) -> list[Prediction]:
        """Predictions at each input's own size. iuv=False skips the DensePose maps (`iuv` None):
        upsampling their 73 channels to a large photo costs far more than the labels."""
        rgbs = [to_rgb_uint8(im) for im in images]
        if not rgbs:
            return []
        boxed, transforms = zip(*(letterbox(im, self.image_size) for im in rgbs))
        x = (np.stack(boxed).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        x = torch.from_numpy(x).permute(0, 3, 1, 2).to(self.device)  # (B, 3, S, S)
        out = self._forward(x)
        preds = []
        for i, (rgb, t) in enumerate(zip(rgbs, transforms)):
            preds.append(self._to_input(out, i, rgb.shape[0], rgb.shape[1], t, iuv))
        return preds

    def _crop(self, maps: torch.Tensor, t: Letterbox) -> torch.Tensor:
        """(C, h, w) head maps -> (C, new_h, new_w): upsample to S x S, cut the letterbox padding."""
        _, px, py, nw, nh = t
        size = self.image_size
        full = F.interpolate(maps[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        return full[:, py : py + nh, px : px + nw]

    def _to_input(
        self, out: dict, i: int, height: int, width: int, t: Letterbox, with_iuv: bool
    ) -> Prediction:
        H, W = height, width  # noqa: N806
        labels = np.empty((H, W), np.uint8)
        for r0, band in _upsample_rows(self._crop(out["seg"][i], t), H, W):
            labels[r0 : r0 + band.shape[1]] = band.argmax(0).to(torch.uint8).cpu().numpy()
        joints = None
        if "pose" in out:
            scale, px, py, _, _ = t
            j = decode_heatmaps(out["pose"][i : i + 1])[0].cpu().numpy()  # (16, 3) in packed pixels
            xy = (j[:, :2] - np.array([px, py], np.float32) + 0.5) / scale - 0.5
            xy[:, 0] = np.clip(xy[:, 0], 0, W - 1)
            xy[:, 1] = np.clip(xy[:, 1], 0, H - 1)
            joints = np.concatenate([xy, j[:, 2:]], axis=1).astype(np.float32)
        iuv = None
        if with_iuv and "dp_index" in out:
            iuv = np.zeros((H, W, 3), np.uint8)
            stacked = torch.cat([out["dp_index"][i], out["dp_u"][i], out["dp_v"][i]], dim=0)
            parts = out["dp_u"].shape[1]
            for r0, band in _upsample_rows(self._crop(stacked, t), H, W):
                part = band[: parts + 1].argmax(0)  # (rows, W)
                idx = (part.clamp(min=1) - 1)[None]
                fg = part > 0
                u = band[parts + 1 : 2 * parts + 1].gather(0, idx)[0] * fg
                v = band[2 * parts + 1 :].gather(0, idx)[0] * fg
                rows = slice(r0, r0 + band.shape[1])
                iuv[rows, :, 0] = part.to(torch.uint8).cpu().numpy()
                iuv[rows, :, 1] = (u.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
                iuv[rows, :, 2] = (v.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return Prediction(labels=labels, joints=joints, iuv=iuv)
