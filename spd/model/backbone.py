"""Dilated torchvision ResNet backbone exposing layer3 and layer4 features.

Built with `weights=None` (nothing is ever downloaded); `pretrained` is a local path to a torchvision
ResNet state dict. Output stride 8 dilates layer3 (x2) and layer4 (x4) instead of striding, as in
DeepLab / JPPNet; output stride 16 dilates layer4 only.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from spd.errors import SpdError

_CHANNELS = {  # (layer3, layer4) output channels
    "resnet18": (256, 512),
    "resnet34": (256, 512),
    "resnet50": (1024, 2048),
    "resnet101": (1024, 2048),
}
_LOW_CHANNELS = {"resnet18": 64, "resnet34": 64, "resnet50": 256, "resnet101": 256}  # layer1


def _dilate_basic_layer(layer: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Turn a strided BasicBlock stage into a dilated one (torchvision only does this for Bottleneck).

    Mirrors torchvision's own rule: the first block keeps the previous dilation on its first conv
    (it sits where the stride used to be), every other 3x3 conv gets the new dilation.
    """
    for i, block in enumerate(layer):
        assert isinstance(block, BasicBlock)
        d1 = previous_dilation if i == 0 else dilation
        block.conv1.stride, block.conv1.dilation, block.conv1.padding = (1, 1), (d1, d1), (d1, d1)
        block.conv2.dilation, block.conv2.padding = (dilation, dilation), (dilation, dilation)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        block.stride = 1


class ResNetBackbone(nn.Module):
    """ResNet stem + layer1..4; forward returns {'layer1'} at stride 4 (the segmentation decoder's
    low-level detail) and {'layer3', 'layer4'} at stride 8 (OS 8) or 8/16 (OS 16).

    Submodule names match torchvision's (conv1, bn1, layer1..4) so its state dicts load directly.
    """

    def __init__(
        self,
        name: str = "resnet18",
        output_stride: int = 8,
        pretrained: str | None = None,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        if name not in _CHANNELS:
            raise SpdError(f"model.backbone: unknown backbone {name!r}; expected one of {list(_CHANNELS)}")
        if output_stride not in (8, 16):
            raise SpdError(f"model.output_stride: expected 8 or 16, got {output_stride!r}")
        ctor = getattr(torchvision.models, name)
        basic = name in ("resnet18", "resnet34")
        if basic:
            net = ctor(weights=None)
            if output_stride == 8:
                _dilate_basic_layer(net.layer3, dilation=2, previous_dilation=1)
                _dilate_basic_layer(net.layer4, dilation=4, previous_dilation=2)
            else:
                _dilate_basic_layer(net.layer4, dilation=2, previous_dilation=1)
        else:
            net = ctor(weights=None, replace_stride_with_dilation=[False, output_stride == 8, True])
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.name = name
        self.output_stride = output_stride
        self.channels = _CHANNELS[name]
        self.low_channels = _LOW_CHANNELS[name]
        self.freeze_bn = freeze_bn
        if pretrained:
            self.load_torchvision_weights(pretrained)
        if freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def load_torchvision_weights(self, path: str | Path) -> None:
        """Load a torchvision ResNet state dict from a local file; `fc.*` is ignored."""
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise SpdError(f"{path}: pretrained backbone weights not found") from None
        except Exception as e:  # noqa: BLE001 - any unreadable file is a user error here
            raise SpdError(f"{path}: cannot read pretrained backbone weights ({e})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise SpdError(f"{path}: expected a torchvision ResNet state dict, got {type(state).__name__}")
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0:3]
            raise SpdError(
                f"{path}: not a torchvision {self.name} state dict ({' '.join(first)[:300]})"
            ) from None

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        if self.freeze_bn:  # frozen BN: running statistics stay those of the pretrained weights
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        c1 = self.layer1(x)  # (B, C1, H/4, W/4)
        c3 = self.layer3(self.layer2(c1))  # (B, C3, H/8 or H/16, ...)
        c4 = self.layer4(c3)  # (B, C4, H/8 or H/16, ...)
        return {"layer1": c1, "layer3": c3, "layer4": c4}
