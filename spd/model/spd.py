"""The SPD network assembled from the task set, and the model file (`spd-model/1`)."""

from __future__ import annotations

import contextlib
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spd.config import TASKS, ConfigError, ModelConfig, from_dict, params_to_dict, replace
from spd.data.targets import HEAD_STRIDE
from spd.errors import SpdError
from spd.io import atomic_write_bytes
from spd.labels import NUM_DP_PARTS, NUM_JOINTS
from spd.model.backbone import ResNetBackbone
from spd.model.heads import DensePoseHead, FacingHead, PoseHead, SegHead, conv_bn_relu, resize_to
from spd.sides import side_permutation, to_anatomical

MODEL_FORMAT = "spd-model/1"


class SPDNet(nn.Module):
    """Shared dilated ResNet + segmentation (always), pose and DensePose heads (per `tasks`).

    forward(x (B, 3, H, W)) -> dict at head resolution (h, w) = (ceil(H/8), ceil(W/8)):
      seg_init (B, K, h, w); seg (B, K, ceil(H/4), ceil(W/4)) — decoded to stride 4;
      pose_init, pose (B, 16, h, w);
      dp_index (B, 25, h, w); dp_u, dp_v (B, 24, h, w) in [0, 1]. Keys of disabled tasks are absent.
    With `facing_head` (spd.sides): seg_init and seg_image (the refined logits) are in the image
    frame, facing (B, 1) is the mirrored logit, and seg holds the anatomical log-probabilities.
    With output stride 16 the backbone features are upsampled to stride 8 before the heads.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        tasks = tuple(cfg.tasks)
        if "seg" not in tasks or any(t not in TASKS for t in tasks):
            raise SpdError(
                f"model.tasks: expected a subset of {list(TASKS)} including 'seg', got {list(tasks)}"
            )
        self.cfg = cfg
        self.tasks = tasks
        self.num_classes = num_classes
        # Paired ablation cells: for one seed, every task set starts its shared layers from the same
        # weights. One draw from torch's generator seeds each part by its name (the generator then
        # stands where it would for any task set), and the segmentation head takes, wherever its
        # tensors have the {seg} head's shapes, the {seg} head's initial values.
        base = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        with _seeded(base, "backbone"):
            self.backbone = ResNetBackbone(cfg.backbone, cfg.output_stride, cfg.pretrained, cfg.freeze_bn)
        c3, c4 = self.backbone.channels
        ch = cfg.head_channels
        context_in: dict[str, int] = {}
        if "pose" in tasks or "densepose" in tasks:
            # pose and DensePose share one cheap neck over layer3 + layer4 (mid- and high-level cues)
            with _seeded(base, "neck"):
                self.neck = conv_bn_relu(c3 + c4, ch, k=1)
        if "pose" in tasks:
            with _seeded(base, "pose_head"):
                self.pose_head = PoseHead(ch, ch, NUM_JOINTS, num_classes)
            context_in["pose"] = NUM_JOINTS
        if "densepose" in tasks:
            with _seeded(base, "dp_head"):
                self.dp_head = DensePoseHead(ch, ch, NUM_DP_PARTS)
            context_in["densepose"] = (NUM_DP_PARTS + 1) + 2 * NUM_DP_PARTS
        low = self.backbone.low_channels
        with _seeded(base, "seg_head"):
            self.seg_head = SegHead(c4, ch, num_classes, context_in, low)
        if context_in:
            with _seeded(base, "seg_head"):
                seg_only = SegHead(c4, ch, num_classes, {}, low)
            _copy_same_shaped(seg_only, self.seg_head)
        self.facing_head = None
        if cfg.facing_head:
            with _seeded(base, "facing_head"):
                self.facing_head = FacingHead(ch)
            # not persistent: derived from num_classes, so model files stay what they were
            self.register_buffer("side_perm", side_permutation(num_classes), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        H, W = x.shape[-2:]
        size = (-(-H // HEAD_STRIDE), -(-W // HEAD_STRIDE))
        feats = self.backbone(x)
        c3, c4 = resize_to(feats["layer3"], size), resize_to(feats["layer4"], size)
        out: dict[str, torch.Tensor] = {}
        context: dict[str, torch.Tensor] = {}
        seg_feat, seg_init = self.seg_head.initial(c4)
        out["seg_init"] = seg_init
        if "pose" in self.tasks or "densepose" in self.tasks:
            shared = self.neck(torch.cat([c3, c4], dim=1))  # (B, C, h, w)
        if "pose" in self.tasks:
            pose_feat, pose_init = self.pose_head.initial(shared)
            out["pose_init"] = pose_init
            out["pose"] = self.pose_head.refined(pose_feat, pose_init, seg_init)
            context["pose"] = pose_init
        if "densepose" in self.tasks:
            dp = self.dp_head(shared)
            out.update(dp)
            context["densepose"] = torch.cat([dp["dp_index"], dp["dp_u"], dp["dp_v"]], dim=1)
        seg = self.seg_head.refined(seg_feat, seg_init, context, feats["layer1"])
        if self.facing_head is not None:
            out["facing"] = self.facing_head(seg_feat)  # (B, 1)
            out["seg_image"] = seg
            seg = to_anatomical(seg, out["facing"], self.side_perm)
        out["seg"] = seg
        return out


@contextlib.contextmanager
def _seeded(base: int, part: str) -> Iterator[None]:
    """Run the block on torch's CPU generator seeded from (base, part); restore the generator after.
    crc32, not hash(): Python salts str hashes per process."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed((base + zlib.crc32(part.encode())) % 2**63)
        yield


@torch.no_grad()
def _copy_same_shaped(source: nn.Module, target: nn.Module) -> None:
    """Copy every parameter and buffer of `source` into the same-named, same-shaped one of `target`."""
    theirs = target.state_dict()
    for name, value in source.state_dict().items():
        if name in theirs and theirs[name].shape == value.shape:
            theirs[name].copy_(value)


def build_model(cfg: ModelConfig, num_classes: int) -> SPDNet:
    """The SPD network for `cfg` (backbone, output stride, tasks, head width) and `num_classes`."""
    return SPDNet(cfg, num_classes)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model  # DDP / DataParallel


def save_model_file(
    path: str | Path,
    model: nn.Module,
    model_cfg: ModelConfig,
    num_classes: int,
    label_set: str,
    image_size: int,
) -> None:
    """Write the `spd-model/1` file atomically (readers never see a half-written model)."""
    state = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
    payload = {
        "format": MODEL_FORMAT,
        "model": params_to_dict(model_cfg),
        "num_classes": int(num_classes),
        "label_set": str(label_set),
        "image_size": int(image_size),
        "state_dict": state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def model_config_from_dict(raw: Any, where: str) -> ModelConfig:
    """The `model` entry of a model file, parsed like params.yaml's `model` section (spd.config).

    Keys the file predates take the library defaults; the trained weights replace any pretrained
    backbone, so `pretrained` is never read again at load time.
    """
    if not isinstance(raw, dict):
        raise SpdError(f"{where}: 'model' is not a mapping")
    try:
        cfg = from_dict(ModelConfig, raw, "model", complete=False)
    except ConfigError as e:
        raise SpdError(f"{where}: {e}") from None
    return replace(cfg, pretrained=None)


def load_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[SPDNet, dict]:
    """Rebuild the network from a model file -> (model in eval mode, info).

    info: {'format', 'model_cfg' (ModelConfig), 'num_classes', 'label_set', 'image_size'}.
    Raises SpdError naming the path when the file is missing, unreadable or not an SPD model file.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise SpdError(f"{path}: model file not found") from None
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file is a user error
        raise SpdError(f"{path}: cannot read model file ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise SpdError(f"{path}: not an SPD model file (expected format {MODEL_FORMAT!r}, got {got!r})")
    missing = [
        k for k in ("model", "num_classes", "label_set", "image_size", "state_dict") if k not in payload
    ]
    if missing:
        raise SpdError(f"{path}: model file lacks {missing}")
    cfg = model_config_from_dict(payload["model"], str(path))
    try:
        model = build_model(cfg, int(payload["num_classes"]))
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise SpdError(
            f"{path}: weights do not match the model config ({str(e).splitlines()[0][:200]})"
        ) from None
    model.eval()
    info = {
        "format": payload["format"],
        "model_cfg": cfg,
        "num_classes": int(payload["num_classes"]),
        "label_set": str(payload["label_set"]),
        "image_size": int(payload["image_size"]),
    }
    return model, info
