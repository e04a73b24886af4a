"""Learning works: the default recipe's network overfits 3 synthetic images.

The score is the training-set mIoU at full label resolution over the classes present in the
images (`miou_present`): SCHP's mIoU averages over all 20 classes, and a few small images never
contain all of them, so an absent class would count as IoU 0 however well the network learns.

Issue 3's bar: train mIoU >= 0.9 within a few hundred steps, at the default profile's 128 px (at
64 px gloves and sunglasses are 1-2 px wide and the stride-4 logits cannot draw them), with the
network params.yaml trains (ResNet-18, output stride 16, 64-channel heads), with all three heads:
every head, loss and cross-head refinement learns. The smaller task sets' forward and backward are
covered by test_model, and the ablation test trains each of its task sets through the pipeline; a
run per task set here would double this test's time. Measured on this project's 2-core CPU in fp32:
3 images 0.76 after 100 steps, 0.90 after 175; 4 images 0.81 after 100, 0.92 after 200 at 4/3 of
the cost per step ({seg} alone, 4 images: 0.80 after 100, 0.91 after 250). A higher learning rate
(6e-3) or a schedule half as long did not get there sooner (0.84 after 150 steps either way).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.config import load_params
from spd.config import LossConfig, TrainConfig
from spd.engine import build_optimizer, evaluate, poly_lr_scheduler, train_one_epoch
from spd.losses import SPDLoss
from spd.model import build_model
from spd.precision import autocast_dtype
from tests.fixtures.model import make_batch

ROOT = Path(__file__).resolve().parents[1]
IMAGES, SIZE, STEPS, CHECK_EVERY, TARGET = 3, 128, 300, 25, 0.9


@pytest.mark.slow
def test_the_default_network_with_all_three_heads_overfits_three_synthetic_images(torch_threads):
    tasks = ("seg", "pose", "densepose")
    torch.manual_seed(0)
    batch = make_batch(IMAGES, SIZE, seed=0)
    model_cfg = dataclasses.replace(load_params(ROOT / "params.yaml").model, tasks=tasks)
    model = build_model(model_cfg, 20)
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
