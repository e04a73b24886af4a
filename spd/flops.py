"""Training compute, counted rather than timed: wall time differs 2x between our machines, FLOPs do not.

A recipe is compared with another at the same training compute (forward + backward FLOPs per
image x images seen), the yardstick of `reports/train.json`'s `train_tflop`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def train_flops_per_image(
    model: nn.Module,
    criterion: nn.Module,
    batch: dict[str, torch.Tensor],
) -> float:
    """Forward + loss + backward FLOPs of one training step on `batch`, divided by its batch size.

    Counted by `torch.utils.flop_counter` (matmuls and convolutions; elementwise work is not
    counted, as in every published FLOP figure). The optimizer step is O(parameters) and left out.
    It runs on a copy, so the model's weights, gradients and BatchNorm statistics are untouched.
    """
    probe = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        outputs = probe(batch["image"])
        loss, _ = criterion(outputs, batch)
        loss.backward()
    return counter.get_total_flops() / batch["image"].shape[0]
