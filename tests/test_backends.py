"""What runs the network (spd.backends): ONNX Runtime gives PyTorch's answers, shares safely between
threads, and when it cannot run says so (backend onnx) or steps aside for PyTorch (backend auto)."""

from __future__ import annotations

import logging
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from spd.config import ModelConfig
from spd.errors import SpdError
from spd.model import build_model
from spd.predict import Predictor
from tests.fixtures.model import randomise_bn

INFO = {"image_size": 64, "num_classes": 20, "label_set": "lip"}


@pytest.fixture(scope="module")
def all_tasks_model() -> nn.Module:
    torch.manual_seed(3)  # a seed whose untrained net predicts several classes, with flip TTA too
    # with the facing head, as params.yaml ships it: its mixture of two readings exports too
    model = build_model(ModelConfig(head_channels=16, facing_head=True), 20)
    randomise_bn(model)
    return model.eval()


@pytest.fixture(scope="module")
def both_backends(all_tasks_model: nn.Module) -> tuple[Predictor, Predictor]:
    onnx, eager = (
        Predictor(all_tasks_model, INFO, backend="onnx"),
        Predictor(all_tasks_model, INFO, backend="torch"),
    )
    assert (onnx.backend, eager.backend) == ("onnx", "torch")
    return onnx, eager


def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 255, (90, 70, 3), dtype=np.uint8),
        rng.integers(0, 255, (200, 300, 3), dtype=np.uint8),
        rng.integers(0, 255, (64, 64), dtype=np.uint8),
    ]


@pytest.mark.parametrize("flip_tta", [False, True], ids=["plain", "flip_tta"])
def test_onnx_and_torch_backends_give_the_same_labels_joints_and_iuv(both_backends, torch_threads, flip_tta):
    onnx, eager = both_backends
    a, b = onnx.predict_batch(images(), flip_tta=flip_tta), eager.predict_batch(images(), flip_tta=flip_tta)
    labels_a = np.concatenate([p.labels.ravel() for p in a])
    labels_b = np.concatenate([p.labels.ravel() for p in b])
    assert len(np.unique(labels_b)) > 1  # not met by a constant map
    assert np.mean(labels_a == labels_b) >= 0.999
    for pa, pb in zip(a, b):
        np.testing.assert_allclose(pa.joints, pb.joints, atol=1e-3)  # x, y in pixels; peak score
        assert np.mean(pa.iuv[..., 0] == pb.iuv[..., 0]) >= 0.999
        assert np.abs(pa.iuv[..., 1:].astype(int) - pb.iuv[..., 1:]).max() <= 1  # U, V x255: rounding


def test_onnx_backend_shared_by_threads_gives_each_call_its_own_answer(both_backends, torch_threads):
    onnx, _ = both_backends
    calls = [(im, flip) for flip in (False, True) for im in images()] * 2
    alone = [onnx.predict(im, iuv=False, flip_tta=flip).labels for im, flip in calls]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda c: onnx.predict(c[0], iuv=False, flip_tta=c[1]).labels, calls))
    for expected, got in zip(alone, together):
        np.testing.assert_array_equal(expected, got)


def test_onnx_backend_without_onnxruntime_is_a_clear_error(all_tasks_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when absent
    with pytest.raises(SpdError, match=r"backend onnx: onnxruntime is not installed"):
        Predictor(all_tasks_model, INFO, backend="onnx")


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_auto_backend_falls_back_to_torch_with_one_note(all_tasks_model, monkeypatch, caplog, missing):
    monkeypatch.setitem(sys.modules, missing, None)
    with caplog.at_level(logging.WARNING, logger="spd.backends"):
        predictor = Predictor(all_tasks_model, INFO, backend="auto")
    assert predictor.backend == "torch"
    notes = [r.getMessage() for r in caplog.records if r.name == "spd.backends"]
    assert len(notes) == 1 and "runs on PyTorch instead" in notes[0] and "backend onnx" in notes[0], notes
    assert predictor.predict(np.zeros((20, 30, 3), np.uint8)).labels.shape == (20, 30)


def test_onnx_backend_when_the_export_fails_is_a_clear_error(all_tasks_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # the TorchScript exporter needs the onnx package
    with pytest.raises(SpdError, match=r"cannot export the network to ONNX \(Module onnx is not installed"):
        Predictor(all_tasks_model, INFO, backend="onnx")


class BatchBakedIn(nn.Module):
    """A network whose trace is wrong: int() makes the traced batch size a constant of the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 20, 3, stride=8, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": self.conv(x) * int(x.shape[0])}


def test_an_export_that_does_not_match_pytorch_is_refused():
    torch.manual_seed(0)
    with pytest.raises(SpdError, match=r"exported output 'seg' differs from PyTorch's"):
        Predictor(BatchBakedIn().eval(), INFO, backend="onnx")


def test_an_unknown_backend_is_named():
    with pytest.raises(SpdError, match=r"backend: expected one of auto, torch, onnx, got 'tensorrt'"):
        Predictor(BatchBakedIn().eval(), INFO, backend="tensorrt")
