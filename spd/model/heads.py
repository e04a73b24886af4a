"""Task heads, each an initial estimate plus (for seg and pose) one refinement stage (JPPNet manner).

All heads work at stride 8 on `head_channels` (C) features; the refinement stages concatenate their
own features with 1x1-remapped outputs of the other branches. The refined segmentation is decoded
to stride 4 with the backbone's layer1 features (as CE2P / DeepLabV3+ do): at the default 128 px a
stride-8 map is 16x16 and gloves, shoes or sunglasses, a few pixels wide, vanish in it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class AtrousContext(nn.Module):
    """ASPP-like context module: parallel 1x1, dilated 3x3 convs and image pooling, fused by 1x1.

    Rates are small (1, 2, 4 at stride 8 on top of the backbone's own dilation) because the default
    inputs are 128 px, i.e. 16x16 feature maps; the paper's 384 px still fits them well.
    """

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (2, 4)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, cout, k=1)] + [conv_bn_relu(cin, cout, k=3, dilation=r) for r in rates]
        )
        # no norm on the pooled branch: a 1x1 map with batch size 1 has no batch statistics
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = conv_bn_relu(cout * (len(rates) + 2), cout, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outs, dim=1))  # (B, C, h, w)


class Remap(nn.Module):
    """1x1 conv that maps another branch's output maps into this branch's feature space."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(cin, cout, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SegHead(nn.Module):
    """Segmentation: context module -> initial logits; refinement sees remapped pose / DensePose maps
    and is decoded to stride 4 with low-level (layer1) features."""

    def __init__(
        self, cin: int, channels: int, num_classes: int, context_in: dict[str, int], low_in: int
    ) -> None:
        super().__init__()
        self.context = AtrousContext(cin, channels)
        self.init_logits = nn.Conv2d(channels, num_classes, 1)
        self.remaps = nn.ModuleDict({k: Remap(c, channels // 2) for k, c in context_in.items()})
        cat = channels + num_classes + (channels // 2) * len(context_in)
        self.refine = nn.Sequential(conv_bn_relu(cat, channels), conv_bn_relu(channels, channels))
        self.low = conv_bn_relu(low_in, 48, k=1)
        self.decode = nn.Sequential(conv_bn_relu(channels + 48, channels), conv_bn_relu(channels, channels))
        self.logits = nn.Conv2d(channels, num_classes, 1)

    def initial(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.context(x)  # (B, C, h, w)
        return feat, self.init_logits(feat)  # (B, K, h, w)

    def refined(
        self,
        feat: torch.Tensor,
        init: torch.Tensor,
        context: dict[str, torch.Tensor],
        low: torch.Tensor,
    ) -> torch.Tensor:
        parts = [feat, init] + [self.remaps[k](context[k]) for k in self.remaps]
        refined = self.refine(torch.cat(parts, dim=1))  # (B, C, h, w) at stride 8
        low = self.low(low)  # (B, 48, 2h, 2w) at stride 4
        up = resize_to(refined, tuple(low.shape[-2:]))
        return self.logits(self.decode(torch.cat([up, low], dim=1)))  # (B, K, 2h, 2w)


class PoseHead(nn.Module):
    """Pose: heatmaps of the 16 LIP joints; refinement sees the remapped segmentation logits."""

    def __init__(self, cin: int, channels: int, num_joints: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(cin, channels), conv_bn_relu(channels, channels))
        self.init_maps = nn.Conv2d(channels, num_joints, 1)
        self.remap_seg = Remap(num_classes, channels // 2)
        cat = channels + num_joints + channels // 2
        self.refine = nn.Sequential(conv_bn_relu(cat, channels), conv_bn_relu(channels, channels, dilation=2))
        self.maps = nn.Conv2d(channels, num_joints, 1)

    def initial(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.features(x)  # (B, C, h, w)
        return feat, self.init_maps(feat)  # (B, J, h, w)

    def refined(self, feat: torch.Tensor, init: torch.Tensor, seg_logits: torch.Tensor) -> torch.Tensor:
        return self.maps(self.refine(torch.cat([feat, init, self.remap_seg(seg_logits)], dim=1)))


class FacingHead(nn.Module):
    """One logit per image: is the person mirrored (their left on the image's right, i.e. facing the
    camera)? From the segmentation context features pooled over the image (average and max), since
    the cue — a visible face — may be anywhere and small."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, 1)
        )

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([feat.mean(dim=(-2, -1)), feat.amax(dim=(-2, -1))], dim=1)  # (B, 2C)
        return self.mlp(pooled)  # (B, 1)


class DensePoseHead(nn.Module):
    """DensePose: part index logits I (background + 24 parts) and per-part U, V in [0, 1]."""

    def __init__(self, cin: int, channels: int, num_parts: int = 24) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(cin, channels), conv_bn_relu(channels, channels))
        self.index = nn.Conv2d(channels, num_parts + 1, 1)
        self.uv = nn.Conv2d(channels, 2 * num_parts, 1)
        self.num_parts = num_parts

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.features(x)
        uv = torch.sigmoid(self.uv(feat))  # (B, 2P, h, w)
        return {
            "dp_index": self.index(feat),  # (B, P + 1, h, w)
            "dp_u": uv[:, : self.num_parts],  # (B, P, h, w)
            "dp_v": uv[:, self.num_parts :],  # (B, P, h, w)
        }


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
