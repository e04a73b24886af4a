"""Left and right parts in the image frame, plus whether the person is mirrored (`model.facing_head`).

A person's left arm is on the image's right when they face the camera and on its left when seen
from behind: the anatomical side is an XOR of facing (a cue at the head) and image side (a cue at
the part). Without help the segmentation head stays at chance on it (README "Left and right: the
facing head"). With `facing_head` the head predicts sided parts in the *image frame* — the labels the
person would carry seen from behind, so a part on the image's left is "left" — and one logit per
image says whether the person is mirrored (anatomical left on the image's right, i.e. facing the
camera). The anatomical scores are the mixture of the two readings, weighted by that probability.

Training targets come from the labels themselves: a person is mirrored when their left parts lie
to the right of their right parts (x centroids, summed over the sided pairs present on both sides).
An image with no such pair says nothing about facing: its sided pixels and its facing term are
left out of the loss.
"""

from __future__ import annotations

import torch

from spd.labels import FLIP_PAIRS, IGNORE, LABEL_SETS, class_flip_map

_LABEL_SET_BY_SIZE = {len(classes): name for name, classes in LABEL_SETS.items()}


def label_set_of(num_classes: int) -> str:
    """The label set ('lip', 'atr') with `num_classes` classes."""
    if num_classes not in _LABEL_SET_BY_SIZE:
        raise ValueError(f"no label set has {num_classes} classes (known: {_LABEL_SET_BY_SIZE})")
    return _LABEL_SET_BY_SIZE[num_classes]


def side_permutation(num_classes: int) -> torch.Tensor:
    """(K,) class permutation that swaps each left/right pair of the label set with K classes."""
    return torch.as_tensor(class_flip_map(label_set_of(num_classes)), dtype=torch.long)


def mirrored_from_labels(parsing: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of `parsing` (B, H, W): (mirrored (B,) bool, known (B,) bool).

    mirrored: the left parts' x centroids lie right of their right counterparts' (summed over the
    pairs present on both sides); known: at least one pair is present on both sides.
    """
    B, _, W = parsing.shape  # noqa: N806
    xs = torch.arange(W, device=parsing.device, dtype=torch.float32)  # (W,)
    lead = torch.zeros(B, device=parsing.device)
    known = torch.zeros(B, dtype=torch.bool, device=parsing.device)
    for left, right in FLIP_PAIRS[label_set_of(num_classes)]:
        centroids, present = [], []
        for k in (left, right):
            columns = (parsing == k).sum(dim=1).float()  # (B, W) pixels of class k per column
            count = columns.sum(dim=1)  # (B,)
            centroids.append((columns * xs).sum(dim=1) / count.clamp(min=1))
            present.append(count > 0)
        both = present[0] & present[1]
        lead = lead + torch.where(both, centroids[0] - centroids[1], torch.zeros_like(lead))
        known = known | both
    return (lead > 0) & known, known


def to_image_frame(
    parsing: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labels (B, H, W) -> (image-frame labels (B, H, W), mirrored (B,) bool, known (B,) bool).

    Sided classes of mirrored images are swapped; those of images with unknown facing are IGNORE.
    """
    mirrored, known = mirrored_from_labels(parsing, num_classes)
    perm = side_permutation(num_classes).to(parsing.device)
    classes = parsing.clamp(max=num_classes - 1)  # IGNORE pixels are masked by `sided` below
    swapped = perm[classes]
    sided = (parsing != IGNORE) & (swapped != classes)  # (B, H, W)
    out = torch.where(sided & mirrored.view(-1, 1, 1), swapped, parsing)
    return out.masked_fill(sided & ~known.view(-1, 1, 1), IGNORE), mirrored, known


def to_anatomical(image_logits: torch.Tensor, facing: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Image-frame logits (B, K, h, w) and mirrored logits (B, 1) -> anatomical log-probabilities
    (B, K, h, w): p(k) = (1 - q)·p_image(k) + q·p_image(perm[k]), q = sigmoid(facing)."""
    q = torch.sigmoid(facing.float()).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    p = torch.softmax(image_logits.float(), dim=1)  # (B, K, h, w)
    mixed = (1 - q) * p + q * p.index_select(1, perm)
    return torch.log(mixed.clamp(min=1e-12))
