"""The SPD network: shapes for every backbone x task set, gradients, pretrained weights, model file."""

from __future__ import annotations

import pytest
import torch
import torchvision

from spd.config import BACKBONES, LossConfig, ModelConfig
from spd.errors import SpdError
from spd.losses import SPDLoss
from spd.model import build_model, load_model_file, save_model_file
from spd.model.backbone import ResNetBackbone
from tests.fixtures.model import make_batch

TASK_SETS = [("seg",), ("seg", "pose"), ("seg", "densepose"), ("seg", "pose", "densepose")]
EXPECTED_KEYS = {
    "seg": {"seg_init", "seg"},
    "pose": {"pose_init", "pose"},
    "densepose": {"dp_index", "dp_u", "dp_v"},
}


def _expected_shapes(tasks, b, k, height, width):
    h, w = -(-height // 8), -(-width // 8)  # heads at stride 8; refined segmentation at stride 4
    shapes = {"seg_init": (b, k, h, w), "seg": (b, k, -(-height // 4), -(-width // 4))}
    if "pose" in tasks:
        shapes |= {"pose_init": (b, 16, h, w), "pose": (b, 16, h, w)}
    if "densepose" in tasks:
        shapes |= {"dp_index": (b, 25, h, w), "dp_u": (b, 24, h, w), "dp_v": (b, 24, h, w)}
    return shapes


# Every depth x every task set at 128 px (1 image), and the non-multiple-of-16 size 136 for all
# depths; the big nets run once per size to keep the test fast.
CASES = [(bb, ts, 128) for bb in ("resnet18", "resnet34") for ts in TASK_SETS]
CASES += [(bb, TASK_SETS[-1], 128) for bb in ("resnet50", "resnet101")]
CASES += [(bb, ts, 136) for bb in BACKBONES for ts in (TASK_SETS if bb == "resnet18" else TASK_SETS[-1:])]


@pytest.mark.parametrize(("backbone", "tasks", "size"), CASES)
def test_forward_shapes_every_backbone_and_task_set(torch_threads, backbone, tasks, size):
    model = build_model(ModelConfig(backbone=backbone, tasks=tasks, head_channels=32), num_classes=20).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size - 8))
    assert {k: tuple(v.shape) for k, v in out.items()} == _expected_shapes(tasks, 1, 20, size, size - 8)
    assert set(out) == set().union(*(EXPECTED_KEYS[t] for t in tasks))  # disabled heads give nothing


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_16_still_returns_the_same_map_sizes_and_atr_classes(torch_threads, output_stride):
    model = build_model(ModelConfig(output_stride=output_stride, head_channels=32), num_classes=18).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 72, 100))
    assert out["seg"].shape == (2, 18, 18, 25)
    assert out["seg_init"].shape == (2, 18, 9, 13)
    assert out["dp_u"].min() >= 0 and out["dp_u"].max() <= 1  # U, V live in [0, 1]


def test_disabled_heads_are_not_built():
    seg_only = build_model(ModelConfig(tasks=("seg",), head_channels=32), 20)
    names = {n.split(".")[0] for n, _ in seg_only.named_parameters()}
    assert names == {"backbone", "seg_head"}
    assert not seg_only.seg_head.remaps  # nothing feeds the refinement from absent branches


@pytest.mark.parametrize("tasks", TASK_SETS)
def test_gradient_reaches_every_parameter_of_every_enabled_head(torch_threads, tasks):
    torch.manual_seed(0)
    model = build_model(ModelConfig(tasks=tasks, head_channels=16), 20).train()
    batch = make_batch(2, 64, seed=1)
    loss, _ = SPDLoss(tasks, LossConfig())(model(batch["image"]), batch)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_freeze_bn_keeps_backbone_statistics_and_parameters_fixed():
    model = build_model(ModelConfig(tasks=("seg",), freeze_bn=True, head_channels=16), 20).train()
    bn = model.backbone.bn1
    assert not bn.training and not bn.weight.requires_grad
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_pretrained_torchvision_state_dict_loads_from_a_local_file(tmp_path, name):
    reference = getattr(torchvision.models, name)(weights=None)  # stands in for downloaded weights
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    backbone = ResNetBackbone(name, output_stride=8, pretrained=str(path))
    assert torch.equal(backbone.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


def test_pretrained_missing_or_incompatible_file_names_the_path(tmp_path):
    with pytest.raises(SpdError, match="nope.pth"):
        ResNetBackbone("resnet18", pretrained=str(tmp_path / "nope.pth"))
    wrong = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(SpdError, match="r50.pth"):
        ResNetBackbone("resnet18", pretrained=str(wrong))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(SpdError, match="garbage.pth"):
        ResNetBackbone("resnet18", pretrained=str(garbage))


def test_model_file_round_trip_gives_identical_outputs(tmp_path):
    cfg = ModelConfig(tasks=("seg", "pose"), head_channels=16)
    model = build_model(cfg, 18).eval()
    path = tmp_path / "models" / "spd.pt"
    save_model_file(path, model, cfg, num_classes=18, label_set="atr", image_size=64)
    raw = torch.load(path, weights_only=True)  # the documented format, readable without our code
    assert raw["format"] == "spd-model/1" and raw["model"]["tasks"] == ["seg", "pose"]
    loaded, info = load_model_file(path)
    assert info["num_classes"] == 18 and info["label_set"] == "atr" and info["image_size"] == 64
    assert info["model_cfg"] == cfg
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.joinpath("models").glob(".*tmp"))  # no temp file left behind


def test_load_model_file_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(SpdError, match="absent.pt"):
        load_model_file(tmp_path / "absent.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(SpdError, match="foreign.pt.*not an SPD model file"):
        load_model_file(foreign)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x00" * 10)
    with pytest.raises(SpdError, match="broken.pt"):
        load_model_file(broken)
