"""The facing head (spd.sides, model.facing_head): sided parts learned in the image frame, told apart
by one mirrored logit per image, and reported in the anatomical frame consumers expect."""

from __future__ import annotations

import pytest
import torch

from spd.config import LossConfig, ModelConfig
from spd.labels import IGNORE, LIP_CLASSES
from spd.losses import SPDLoss
from spd.model import build_model
from spd.model.spd import model_config_from_dict
from spd.sides import mirrored_from_labels, to_anatomical, to_image_frame
from spd.tta import flip_average

L_ARM, R_ARM = LIP_CLASSES.index("left_arm"), LIP_CLASSES.index("right_arm")
L_LEG, R_LEG = LIP_CLASSES.index("left_leg"), LIP_CLASSES.index("right_leg")
FACE = LIP_CLASSES.index("face")


def person(facing_camera: bool, size: int = 32) -> torch.Tensor:
    """(H, W) labels: a face, two arms and one leg; facing the camera puts the left arm image-right."""
    lab = torch.zeros(size, size, dtype=torch.long)
    lab[2:6, 14:18] = FACE
    image_left, image_right = (R_ARM, L_ARM) if facing_camera else (L_ARM, R_ARM)
    lab[8:20, 4:8], lab[8:20, 24:28] = image_left, image_right
    lab[20:30, 18:22] = L_LEG
    return lab


def test_a_person_facing_the_camera_is_mirrored_and_one_seen_from_behind_is_not() -> None:
    no_pair = torch.zeros(32, 32, dtype=torch.long)
    no_pair[8:20, 4:8] = L_ARM  # one arm alone says nothing about facing
    mirrored, known = mirrored_from_labels(torch.stack([person(True), person(False), no_pair]), 20)
    assert mirrored.tolist() == [True, False, False]
    assert known.tolist() == [True, True, False]


def test_image_frame_labels_swap_the_sided_parts_of_mirrored_people_only() -> None:
    front, back = person(True), person(False)
    front[0, 0] = IGNORE
    lone = torch.zeros(32, 32, dtype=torch.long)
    lone[8:20, 4:8] = L_ARM
    lone[0:4, 0:4] = FACE
    out, mirrored, _ = to_image_frame(torch.stack([front, back, lone]), 20)
    # seen from behind the labels already are the image frame; a mirrored person's are swapped
    assert torch.equal(out[1], back)
    assert out[0, 10, 5] == L_ARM and out[0, 10, 25] == R_ARM and out[0, 25, 19] == R_LEG
    assert out[0, 0, 0] == IGNORE and out[0, 3, 15] == FACE
    # unknown facing: sided pixels are left out, the rest is kept
    assert (out[2, 8:20, 4:8] == IGNORE).all() and (out[2, 0:4, 0:4] == FACE).all()


def test_the_mirrored_probability_decides_which_side_a_part_is_reported_on() -> None:
    logits = torch.full((2, 20, 4, 4), -5.0)
    logits[:, L_ARM] = 5.0  # the head sees the image-left arm everywhere
    facing = torch.tensor([[-20.0], [20.0]])  # image 0 seen from behind, image 1 facing the camera
    perm = torch.arange(20)
    perm[[L_ARM, R_ARM, L_LEG, R_LEG]] = torch.tensor([R_ARM, L_ARM, R_LEG, L_LEG])
    anatomical = to_anatomical(logits, facing, perm)
    assert torch.allclose(anatomical.exp().sum(1), torch.ones(2, 4, 4), atol=1e-5)
    assert (anatomical[0].argmax(0) == L_ARM).all()
    assert (anatomical[1].argmax(0) == R_ARM).all()


def test_the_loss_scores_the_image_frame_and_the_facing_logit() -> None:
    """A head that is right in the image frame and knows the facing has a lower loss than one that
    predicts the anatomical labels directly (the frame the plain head learns)."""
    labels = torch.stack([person(True), person(False)])
    image_frame, _, _ = to_image_frame(labels, 20)
    criterion = SPDLoss(("seg",), LossConfig(seg_lovasz=1.0))

    def outputs(seg_labels: torch.Tensor, facing: list[float]) -> dict[str, torch.Tensor]:
        logits = torch.nn.functional.one_hot(seg_labels, 20).permute(0, 3, 1, 2).float() * 10
        return {"seg_init": logits, "seg_image": logits, "facing": torch.tensor(facing).view(2, 1)}

    right, parts = criterion(outputs(image_frame, [10.0, -10.0]), {"parsing": labels})
    anatomical, _ = criterion(outputs(labels, [10.0, -10.0]), {"parsing": labels})
    wrong_facing, _ = criterion(outputs(image_frame, [-10.0, 10.0]), {"parsing": labels})
    assert right < 0.01 < anatomical and right < wrong_facing
    assert {"loss_seg", "loss_seg_init", "loss_seg_facing", "loss_seg_lovasz"} <= set(parts)


def test_a_facing_model_reports_anatomical_probabilities_and_survives_flip_tta() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", head_channels=16, facing_head=True), 20).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        tta = flip_average(model, x, "lip")
    assert out["facing"].shape == (2, 1) and out["seg_image"].shape == out["seg"].shape
    assert torch.allclose(out["seg"].exp().sum(1), torch.ones(2, 16, 16), atol=1e-4)
    assert tta["seg"].shape == out["seg"].shape and tta["facing"].shape == (2, 1)


@pytest.mark.parametrize("facing_head", [False, True])
def test_model_files_keep_the_setting_and_files_from_before_it_load_without_the_head(
    facing_head: bool,
) -> None:
    raw = {"backbone": "resnet18", "output_stride": 16, "tasks": ["seg"], "head_channels": 16}
    if facing_head:
        raw["facing_head"] = True
    cfg = model_config_from_dict(raw, "model.pt")
    assert cfg.facing_head is facing_head
    model = build_model(cfg, 20)
    assert ("facing" in model(torch.randn(1, 3, 32, 32))) is facing_head
    assert not any(k.startswith("side_perm") for k in model.state_dict())  # derived, not stored
