"""The library's typed, frozen configuration and the one dict -> dataclass parser.

`spd` holds only what the library itself uses: the model (`ModelConfig`), the loss (`LossConfig`),
the optimisation and augmentation knobs (`TrainConfig`, `AugmentConfig`) and a raw dataset to pack
(`SourceConfig`). The pipeline's schema (every section of params.yaml, `Params`) lives in
`pipeline/config.py` and is parsed with `from_dict` below, as are model files (spd.model).

Defaults: the pipeline never uses the defaults written here — `pipeline.config.load_params`
requires every key in params.yaml, the one source of the pipeline's defaults. They exist for code
that builds a config by hand (tests, benchmarks, notebooks) and for model files written before a
field existed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

TASKS = ("seg", "pose", "densepose")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


class ConfigError(ValueError):
    """A params file (or a --set override) that does not describe a valid configuration."""


# ---------------------------------------------------------------------------------------------
# The library's sections.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    """One raw dataset to pack: where it lies and how to read it."""

    source: Literal["synthetic", "lip", "atr"] = "synthetic"  # synthetic = LIP layout from synth
    root: str = "data/raw/synth_lip"
    iuv_root: str | None = None  # DensePose IUV PNGs; None: the conventional place under root
    val_fraction: float = 0.2  # ATR only (no official split): seeded split
    split_seed: int = 0
    out: str = "data/prepared/main"


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet18"
    output_stride: Literal[8, 16] = 8
    pretrained: str | None = None  # local path to a torchvision state dict; never downloaded
    freeze_bn: bool = False
    tasks: tuple[str, ...] = TASKS
    head_channels: int = 128
    facing_head: bool = False  # sided parts in the image frame + a mirrored logit (spd.sides)


@dataclass(frozen=True)
class LossConfig:
    lambda_seg: float = 1.0
    lambda_pose: float = 1.0
    lambda_densepose: float = 1.0
    from_tuning: bool = False  # take λp, λd from tuning/best_params.yaml (written by `spd tune`)
    tuning_file: str = "tuning/best_params.yaml"
    heatmap_sigma: float = 1.5  # Gaussian σ of joint heatmaps, in head-resolution pixels
    seg_lovasz: float = 0.0  # weight of the Lovász-softmax term added to the refined seg CE (SCHP)


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True
    scale_min: float = 0.8
    scale_max: float = 1.2
    rotate_deg: float = 15.0


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 16  # global: split evenly across Ray workers
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    lr_schedule: Literal["poly", "cosine"] = "poly"  # decay after warm-up, stepped every batch
    warmup_epochs: float = 0.0  # linear warm-up from ~0 to lr over this many epochs (may be fractional)
    seed: int = 0
    bf16: bool | Literal["auto"] = "auto"  # auto: bf16 autocast only where the device computes it natively
    channels_last: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ray_workers: int = 1  # Ray Train workers (DataLoader processes: loader_workers)
    use_gpu: bool = False
    cpus_per_worker: float = 2.0
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = 1
    keep_checkpoints: int = 2
    run_name: str = "spd-train"
    storage_path: str = "ray_results"  # local dir, shared FS or s3:// URI on a multi-node cluster
    model_out: str = "models/spd.pt"
    report: str = "reports/train.json"
    history: str = "reports/train_history.csv"
    val_every: int = 1
    epoch_images: int | None = None  # images per epoch; None: one pass over the training split
    loader_workers: int = 0  # DataLoader processes per Ray worker (0: load in the training process)
    fault_at_epoch: int | None = None  # testing hook: a worker dies mid-epoch once, here


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass
# ---------------------------------------------------------------------------------------------


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in args) + " or null"
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} values"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _convert(value: Any, tp: Any, path: str, complete: bool = True) -> Any:
    origin = typing.get_origin(tp)
    wrong = ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise wrong
        return from_dict(tp, value, path, complete=complete)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path, complete)
            except ConfigError:
                continue
        raise wrong
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is not bool:
            return value
        raise wrong
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]", complete) for i, v in enumerate(value))
        if len(value) != len(args):
            raise wrong
        return tuple(_convert(v, a, f"{path}[{i}]", complete) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise wrong
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong
    raise ConfigError(f"{path}: unsupported type {tp}")  # a bug in this module, not user input


def from_dict(cls: type, raw: dict, prefix: str = "", *, complete: bool = True) -> Any:
    """The dataclass `cls` (nested sections too) from a raw mapping; ConfigError names the key path.

    `complete`: every field must be given (params.yaml is the one source of the pipeline's
    defaults); False lets the dataclass defaults fill in (model files older than a field).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key; expected one of {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in raw:
            kwargs[f.name] = _convert(raw[f.name], hints[f.name], path, complete)
        elif complete:
            raise ConfigError(f"{path}: missing (expected {_describe(hints[f.name])}); every key must be set")
    return cls(**kwargs)


def params_to_dict(params: Any) -> dict:
    """Plain nested dict (tuples as lists) — for logging and for writing a params file back."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(params)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; used to log every parameter to MLflow."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def replace(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace, re-exported so stage code does not juggle frozen objects by hand."""
    return dataclasses.replace(obj, **changes)
