"""What runs the network for `spd.predict.Predictor`: PyTorch, or ONNX Runtime on the CPU.

ONNX Runtime runs the same network in about half the CPU time of eager PyTorch in fp32 on this
project's CPUs (AMD EPYC Zen 3: 45 vs 97 ms per 128 px image of the default model, outputs within
7e-6), and the forward is nearly all of a prediction. The network is exported at load time from the
loaded model itself (TorchScript exporter, in memory; nothing is downloaded or written), with the
batch axis dynamic so flip TTA's batch of 2B runs through the same session, and checked against
PyTorch on a batch of two before it is used. onnxruntime (and onnx, which the exporter needs) are
imported only here, only when asked for: `spd` imports without them.

Both forwards are callables (B, 3, S, S) float32 -> {head output: (B, ., h, w) float32}, the form
`spd.tta.flip_average` takes, and hold nothing that a call writes: a Predictor shares one between
threads (InferenceSession.run is thread-safe).
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch
from torch import nn

from spd.errors import SpdError
from spd.precision import autocast_dtype

BACKENDS = ("auto", "torch", "onnx")
INPUT_NAME = "image"
logger = logging.getLogger(__name__)


class TorchForward:
    """Eager PyTorch on the model's device, channels_last, bf16 autocast where the device computes
    bf16 natively (spd.precision), outputs as float32."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.autocast_dtype = autocast_dtype("auto", device)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        enabled = self.autocast_dtype is not None
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled):
            out = self.model(x.contiguous(memory_format=torch.channels_last))
        return {k: v.float() for k, v in out.items()}


class OnnxForward:
    """The model exported to ONNX (input `image` (B, 3, size, size), every head output the model
    returns, by its key) and run by an ONNX Runtime CPU session with `threads` intra-op threads
    (default: torch's setting). fp32. Raises SpdError when onnxruntime or onnx is missing, the
    export fails or its outputs do not match PyTorch's."""

    name = "onnx"
    autocast_dtype = None  # fp32: ONNX Runtime's CPU kernels

    def __init__(self, model: nn.Module, image_size: int, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise SpdError("backend onnx: onnxruntime is not installed (pip install onnxruntime)") from None
        probe = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode(False), torch.no_grad():  # the exporter traces: no inference tensors
            expected = {k: v.float() for k, v in model(probe).items()}
            self.output_names = list(expected)
            graph = export_onnx(model, probe[:1], self.output_names)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: on a shared or serving machine, spinning
        # threads take the cores that other requests' pre- and post-processing need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - any failure to load the graph means: not usable
            raise SpdError(
                f"backend onnx: ONNX Runtime cannot load the exported network ({_first_line(e)})"
            ) from None
        check_outputs(expected, self(probe))

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feed = {INPUT_NAME: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        outputs = self.session.run(self.output_names, feed)
        return {k: torch.from_numpy(v) for k, v in zip(self.output_names, outputs)}


def export_onnx(model: nn.Module, example: torch.Tensor, output_names: list[str]) -> bytes:
    """The ONNX graph of `model` traced on `example` (1, 3, S, S), batch axis dynamic, as bytes.

    The TorchScript exporter (dynamo=False): with torch 2.14 it needs only the `onnx` package, where
    the torch.export-based one also needs onnxscript. The spatial size is fixed (the Predictor
    always feeds image_size squares), so shapes computed from it are constants of the graph.
    """
    buf = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in [INPUT_NAME, *output_names]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based export"
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # sizes from the fixed S x S
            torch.onnx.export(
                model,
                (example,),
                buf,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=output_names,
                dynamic_axes=dynamic,
                opset_version=17,
            )
    except Exception as e:  # noqa: BLE001 - missing onnx package, an op without ONNX form, ...
        raise SpdError(f"backend onnx: cannot export the network to ONNX ({_first_line(e)})") from None
    return buf.getvalue()


def check_outputs(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    """SpdError unless every head output of the exported network matches PyTorch's: same shape, and
    within 1e-4 + 1e-3 x the output's largest magnitude (a probe on the default model: 7e-6)."""
    for key, ref in expected.items():
        out = got[key]
        if out.shape != ref.shape:
            raise SpdError(
                f"backend onnx: exported output {key!r} has shape {tuple(out.shape)}, PyTorch's "
                f"{tuple(ref.shape)} (the export does not follow the batch axis)"
            )
        diff = float((out - ref).abs().max())
        if not np.isfinite(diff) or diff > 1e-4 + 1e-3 * float(ref.abs().max()):
            raise SpdError(
                f"backend onnx: exported output {key!r} differs from PyTorch's by up to {diff:.3g} "
                "(the network does not trace to a fixed graph)"
            )


def network_forward(
    model: nn.Module, image_size: int, device: torch.device, backend: str = "auto", threads: int | None = None
) -> TorchForward | OnnxForward:
    """The forward for `backend`: torch; onnx (CPU only; SpdError when unavailable); auto: onnx on the
    CPU, falling back to torch with one logged note when it is unavailable, and torch on CUDA."""
    if backend not in BACKENDS:
        raise SpdError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cpu"):
        return TorchForward(model, device)
    if device.type != "cpu":
        raise SpdError(
            f"backend onnx runs on the CPU only (ONNX Runtime's CPU provider), not on {device}; "
            "use backend torch or auto"
        )
    try:
        return OnnxForward(model, image_size, threads)
    except SpdError as e:
        if backend == "onnx":
            raise
        logger.warning("note: %s; the network runs on PyTorch instead", e)
        return TorchForward(model, device)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]
