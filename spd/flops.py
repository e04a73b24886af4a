"""Training compute, counted rather than timed: wall time differs 2x between our machines, FLOPs do not.

A recipe is compared with another at the same training compute (forward + backward FLOPs per
image x images seen), the yardstick of `reports/train.json`'s `train_tflop`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def conv_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: object,
    _stride: object,
    _padding: object,
    _dilation: object,
    transposed: bool,
    _output_padding: object,
    _groups: int,
    output_mask: list[bool],
    out_shape: object,
    **kwargs: object,
) -> int:
    """FLOPs of a convolution's backward: grad_input and grad_weight each take the forward's
    multiply-adds. torch's own formula (torch 2.14) counts grad_weight of a grouped convolution as
    if it were dense, `groups` times too many: a depthwise 3x3 conv's backward came out at 65x its
    forward, so MobileNets' training FLOPs were ~13x too high. The forward count (which divides by
    groups through the weight's shape) is right; tests/test_recipe.py fails once torch fixes it."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


CONV_BACKWARD_FIX = {torch.ops.aten.convolution_backward: conv_backward_flops}


def train_flops_per_image(
    model: nn.Module,
    criterion: nn.Module,
    batch: dict[str, torch.Tensor],
) -> float:
    """Forward + loss + backward FLOPs of one training step on `batch`, divided by its batch size.

    Counted by `torch.utils.flop_counter` (matmuls and convolutions; elementwise work is not
    counted, as in every published FLOP figure). The optimizer step is O(parameters) and left out.
    It runs on a copy, so the model's weights, gradients and BatchNorm statistics are untouched.
    Grouped (e.g. depthwise) convolutions are counted right (`CONV_BACKWARD_FIX`).
    """
    probe = copy.deepcopy(model).train()
    with FlopCounterMode(display=False, custom_mapping=CONV_BACKWARD_FIX) as counter:
        outputs = probe(batch["image"])
        loss, _ = criterion(outputs, batch)
        loss.backward()
    return counter.get_total_flops() / batch["image"].shape[0]
