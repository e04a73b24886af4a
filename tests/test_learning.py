"""Learning works: a ResNet-18 SPD overfits 8 synthetic images for each of the paper's task sets.

The score is the training-set mIoU at full label resolution over the classes present in the 8
images (`miou_present`): SCHP's mIoU averages over all 20 classes, and 8 small images never
contain all of them, so an absent class would count as IoU 0 however well the network learns.

Issue 3's bar: train mIoU >= 0.9 within a few hundred steps, at the default profile's 128 px (at
64 px gloves and sunglasses are 1-2 px wide and the stride-4 logits cannot draw them). Measured
on 2 idle cores with {seg, pose} and the default heads: 0.76 after 100 steps, 0.91 after 200, 0.93
after 300 of the 300-step poly schedule; about a minute per task set, stopping at the bar.
"""

from __future__ import annotations

import pytest
import torch

from spd.config import LossConfig, ModelConfig, TrainConfig
from spd.engine import build_optimizer, evaluate, poly_lr_scheduler, train_one_epoch
from spd.losses import SPDLoss
from spd.model import build_model
from spd.precision import autocast_dtype
from tests.fixtures.model import make_batch

SIZE, STEPS, CHECK_EVERY, TARGET = 128, 300, 25, 0.9


@pytest.mark.slow
@pytest.mark.parametrize(
    "tasks", [("seg",), ("seg", "pose"), ("seg", "densepose"), ("seg", "pose", "densepose")]
)
def test_resnet18_spd_overfits_eight_synthetic_images(torch_threads, tasks):
    torch.manual_seed(0)
    batch = make_batch(8, SIZE, seed=0)
    model = build_model(ModelConfig(backbone="resnet18", tasks=tasks), 20)
    model = model.to(memory_format=torch.channels_last)
    criterion = SPDLoss(tasks, LossConfig())
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", lr=3e-3, weight_decay=0.0))
    scheduler = poly_lr_scheduler(optimizer, STEPS, power=0.9)
    kw = {"autocast_dtype": autocast_dtype("auto", "cpu"), "channels_last": True}
    history = []
    for _ in range(STEPS // CHECK_EVERY):
        train = train_one_epoch(model, criterion, optimizer, scheduler, [batch] * CHECK_EVERY, "cpu", **kw)
        scores = evaluate(model, [batch], "cpu", num_classes=20, tasks=tasks, **kw)
        history.append((round(train["loss"], 3), round(scores["miou_present"], 3)))
        if scores["miou_present"] >= TARGET:
            break
    assert scores["miou_present"] >= TARGET, f"(loss, train mIoU) every {CHECK_EVERY} steps: {history}"
    assert scores["pixel_acc"] >= 0.95, scores
