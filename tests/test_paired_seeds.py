"""Ablation cells that share a seed are pairs: the same initial weights for the layers every task set
has, and the same data order and augmentation, whichever heads the task set adds."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from spd.config import AugmentConfig, LossConfig, ModelConfig
from spd.data.dataset import SPDDataset
from spd.data.packed import PackedSplit
from spd.engine import train_one_epoch
from spd.losses import SPDLoss
from spd.model import build_model
from tests.fixtures.model import make_batch

ALL = ("seg", "pose", "densepose")


def _build(tasks: tuple[str, ...], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # as the training worker does before building the model
    return build_model(ModelConfig(backbone="resnet18", head_channels=16, tasks=tasks), num_classes=20)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return module.state_dict()


def test_the_backbone_starts_identical_for_every_task_set_at_one_seed_and_differs_across_seeds() -> None:
    seg, full = _build(("seg",), 0), _build(ALL, 0)
    for name, value in _state(seg.backbone).items():
        assert torch.equal(value, _state(full.backbone)[name]), name
    other_seed = _state(_build(("seg",), 1).backbone)
    assert not torch.equal(_state(seg.backbone)["layer1.0.conv1.weight"], other_seed["layer1.0.conv1.weight"])


def test_the_segmentation_head_layers_whose_shapes_do_not_depend_on_the_task_set_start_identical() -> None:
    seg, full = _state(_build(("seg",), 3).seg_head), _state(_build(ALL, 3).seg_head)
    shared = [n for n in seg if seg[n].shape == full[n].shape]
    for prefix in ("context.", "init_logits.", "low.", "decode.", "logits."):
        assert any(n.startswith(prefix) for n in shared), prefix
    for name in shared:
        assert torch.equal(seg[name], full[name]), name
    assert seg["refine.0.0.weight"].shape != full["refine.0.0.weight"].shape  # sees pose + DensePose maps
    assert not any(n.startswith("remaps.") for n in seg)


def test_a_task_head_does_not_depend_on_which_other_heads_exist() -> None:
    pose, full = _build(("seg", "pose"), 5), _build(ALL, 5)
    for name, value in _state(pose.pose_head).items():
        assert torch.equal(value, _state(full.pose_head)[name]), name
    assert torch.equal(_state(pose.neck)["0.weight"], _state(full.neck)["0.weight"])


def test_building_the_model_advances_the_global_generator_the_same_for_every_task_set() -> None:
    _build(("seg",), 7)
    after_seg = torch.get_rng_state()
    _build(ALL, 7)
    assert torch.equal(after_seg, torch.get_rng_state())


def test_a_training_step_draws_nothing_from_the_global_generator(torch_threads) -> None:
    """So the augmentation draws that follow are the same whichever heads were trained."""
    model = _build(ALL, 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = torch.get_rng_state()
    train_one_epoch(
        model, SPDLoss.from_config(ALL, LossConfig()), optimizer, None, [make_batch(2, 32)], "cpu"
    )
    assert torch.equal(before, torch.get_rng_state())


def _batches_fed(prepared: Path, tasks: tuple[str, ...], seed: int, epochs: int = 2) -> list:
    """The worker's order of events (one worker): build the model, then draw each epoch's batches
    through the seeded sampler and the augmenting dataset; returns (sample indices, images) per batch."""
    dataset = SPDDataset(PackedSplit(prepared / "train"), augment=AugmentConfig())
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler, drop_last=True)
    _build(tasks, seed)
    fed = []
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        fed += [(batch["index"], batch["image"]) for batch in loader]
    return fed


def test_data_order_and_augmentation_are_identical_across_task_sets_for_one_seed(prepared_tiny: Path) -> None:
    seg, full = _batches_fed(prepared_tiny, ("seg",), 0), _batches_fed(prepared_tiny, ALL, 0)
    assert len(seg) == len(full) > 1
    for (seg_index, seg_images), (full_index, full_images) in zip(seg, full):
        assert torch.equal(seg_index, full_index) and torch.equal(seg_images, full_images)
    other_seed = _batches_fed(prepared_tiny, ("seg",), 1)
    assert not torch.equal(other_seed[0][0], seg[0][0])
