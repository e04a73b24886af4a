"""Horizontal-flip test-time augmentation: one implementation for `spd.engine.evaluate` (the
evaluate stage, training validation) and `spd.predict.Predictor` (what consumers run)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from spd.labels import class_flip_map, densepose_flip_map, joint_flip_map

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def flip_permutations(label_set: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Channel permutation per head output under a horizontal flip (left/right swapped).

    Outputs without one (DensePose U, V) are not mirror-exact without a symmetry map.
    """
    classes = torch.as_tensor(class_flip_map(label_set), device=device)
    joints = torch.as_tensor(joint_flip_map(), device=device)
    parts = torch.as_tensor(densepose_flip_map(), device=device)
    return {
        "seg": classes,
        "seg_init": classes,
        "seg_image": classes,
        "pose": joints,
        "pose_init": joints,
        "dp_index": parts,
    }


def flip_average(forward: Forward, x: torch.Tensor, label_set: str) -> dict[str, torch.Tensor]:
    """Head outputs of `x` (B, 3, H, W) averaged with those of its mirror image, mirrored back and
    left/right swapped; float32. U, V keep the plain pass's values. One forward of batch 2B."""
    B = x.shape[0]  # noqa: N806
    both = forward(torch.cat([x, x.flip(-1)], dim=0))
    perms = flip_permutations(label_set, x.device)
    out = {}
    for key, value in both.items():
        plain, mirrored = value[:B].float(), value[B:].float().flip(-1)
        perm = perms.get(key)
        if perm is None:
            out[key] = plain
            continue
        if perm.numel() != value.shape[1]:
            raise ValueError(
                f"flip TTA: output {key!r} has {value.shape[1]} channels but the {label_set!r} flip map "
                f"has {perm.numel()}; pass the model's label set"
            )
        out[key] = (plain + mirrored[:, perm]) / 2
    return out
