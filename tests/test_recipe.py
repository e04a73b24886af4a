"""The training recipe's parts: the lr schedule, the Lovász term and the compute count that recipes
are compared by."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spd.config import LossConfig, ModelConfig, TrainConfig
from spd.engine import build_scheduler
from spd.flops import train_flops_per_image
from spd.labels import IGNORE
from spd.losses import SPDLoss, lovasz_softmax
from spd.model import build_model
from spd.precision import autocast_dtype, cpu_has_native_bf16
from tests.fixtures.model import make_batch


def _lrs(cfg: TrainConfig, total: int, per_epoch: int) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, total, per_epoch)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs + [opt.param_groups[0]["lr"]]


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_lr_warms_up_linearly_to_its_peak_then_decays_to_zero_at_the_last_step(schedule):
    cfg = TrainConfig(lr=0.01, warmup_epochs=2, lr_schedule=schedule)
    lrs = _lrs(cfg, total=100, per_epoch=10)
    warm = lrs[:20]
    assert all(b > a for a, b in zip(warm, warm[1:])), warm
    assert lrs[0] < 0.01 / 10 and lrs[20] == pytest.approx(0.01)
    decay = lrs[20:]
    assert all(b <= a for a, b in zip(decay, decay[1:]))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_without_warmup_the_schedule_is_the_classic_poly_decay():
    cfg = TrainConfig(lr=0.01, warmup_epochs=0, lr_schedule="poly", poly_power=0.9)
    lrs = _lrs(cfg, total=50, per_epoch=10)
    assert lrs == pytest.approx([0.01 * (1 - i / 50) ** 0.9 for i in range(51)])


def test_cosine_is_at_half_the_peak_halfway_through_the_decay():
    lrs = _lrs(TrainConfig(lr=0.01, warmup_epochs=1, lr_schedule="cosine"), total=110, per_epoch=10)
    assert lrs[10 + 50] == pytest.approx(0.005)


def test_lovasz_is_zero_for_a_perfect_prediction_and_one_minus_iou_for_a_hard_one():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, IGNORE]]])  # (1, 2, 4)
    perfect = F.one_hot(target.clamp(max=1), 2).permute(0, 3, 1, 2).float()  # (1, 2, 2, 4)
    assert lovasz_softmax(perfect, target).item() == pytest.approx(0.0)
    # every class-1 pixel predicted as 0: IoU(0) = 4/7, IoU(1) = 0 -> mean(1 - IoU) over both classes
    wrong = torch.zeros_like(perfect)
    wrong[:, 0] = 1.0
    assert lovasz_softmax(wrong, target).item() == pytest.approx(((1 - 4 / 7) + 1.0) / 2)


def test_lovasz_ignores_unlabelled_pixels_and_is_part_of_the_seg_term_when_weighted():
    batch = make_batch(2, 32, seed=1)
    model = build_model(ModelConfig(tasks=("seg",), head_channels=16), 20)
    out = model(batch["image"])
    _, plain = SPDLoss(("seg",), LossConfig())(out, batch)
    total, weighted = SPDLoss(("seg",), LossConfig(seg_lovasz=0.5))(out, batch)
    assert "loss_seg_lovasz" not in plain
    assert 0 < weighted["loss_seg_lovasz"] <= 1
    assert total.item() == pytest.approx(
        (plain["loss_seg"] + 0.5 * weighted["loss_seg_lovasz"]).item(), rel=1e-5
    )
    total.backward()  # the surrogate is differentiable end to end
    all_ignored = torch.full((1, 4, 4), IGNORE)
    assert lovasz_softmax(torch.rand(1, 20, 4, 4).softmax(1), all_ignored).item() == 0.0


def test_training_flops_count_forward_and_backward_and_leave_the_model_untouched():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8))

    def criterion(outputs: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
        return outputs.float().mean(), {}

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = conv

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = Wrapped()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops = train_flops_per_image(model, criterion, {"image": torch.randn(4, 3, 16, 16)})
    forward = 2 * 3 * 9 * 8 * 16 * 16  # multiply-adds x 2 per output pixel and channel
    # backward of the first layer needs only the weight gradient (the input needs none): 2 x forward
    assert flops == 2 * forward
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def _depthwise_step_flops(custom_mapping: dict | None) -> tuple[int, int]:
    from torch.utils.flop_counter import FlopCounterMode

    conv = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        conv(x)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False, custom_mapping=custom_mapping or {}) as counter:
        conv(x).sum().backward()
    return forward, counter.get_total_flops()


def test_a_depthwise_convolution_costs_three_forwards_per_training_step() -> None:
    # MobileNet peers (bench_peer) are compared with SPD at the same counted compute
    from spd.flops import CONV_BACKWARD_FIX

    forward, step = _depthwise_step_flops(CONV_BACKWARD_FIX)
    assert step == 3 * forward  # forward + grad_input + grad_weight


def test_torch_still_miscounts_grouped_conv_backward_so_spd_flops_keeps_its_fix() -> None:
    # torch's formula counts a grouped conv's grad_weight as dense (16 groups: 16x). When this
    # fails, torch counts it right: drop CONV_BACKWARD_FIX from spd/flops.py.
    forward, step = _depthwise_step_flops(None)
    assert step == (1 + 1 + 16) * forward


def test_auto_precision_uses_bf16_only_on_cpus_that_compute_it_natively(tmp_path):
    zen3 = tmp_path / "zen3"
    zen3.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    sapphire = tmp_path / "spr"
    sapphire.write_text("processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert not cpu_has_native_bf16(str(zen3))
    assert cpu_has_native_bf16(str(sapphire))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))
    assert autocast_dtype(True, "cpu") == torch.bfloat16
    assert autocast_dtype(False, "cpu") is None
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_native_bf16() else None)
