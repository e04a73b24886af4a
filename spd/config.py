"""Typed, frozen configuration parsed from the one `params.yaml`.

Every stage loads the whole file through `load_params`, so a mistake anywhere is reported before
any work starts, with the key path and what was expected (`loss.lambda_seg: expected a number
>= 0, got -1`). Nothing below the stage modules reads raw dicts: they receive these objects.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

TASKS = ("seg", "pose", "densepose")
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


class ConfigError(ValueError):
    """A params file (or a --set override) that does not describe a valid configuration."""


# ---------------------------------------------------------------------------------------------
# Sections. Defaults here mirror params.yaml; the file is the place users edit.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthCrossConfig:
    """A second, shifted synthetic domain written in the ATR layout (cross-dataset evaluation)."""

    enabled: bool = True
    count: int = 120
    seed: int = 1000
    out: str = "data/raw/synth_atr"


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    image_size: int = 128  # longest side of the generated images (sizes vary below it)
    train: int = 480
    val: int = 120
    out: str = "data/raw/synth_lip"
    cross: SynthCrossConfig = field(default_factory=SynthCrossConfig)


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
class PrepareConfig:
    image_size: int = 128  # packed square size; must be a multiple of 8
    bad_data: Literal["fail", "skip"] = "fail"
    main: SourceConfig = field(default_factory=SourceConfig)
    cross: SourceConfig | None = None  # second dataset for cross-dataset evaluation


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet18"
    output_stride: Literal[8, 16] = 8
    pretrained: str | None = None  # local path to a torchvision state dict; never downloaded
    freeze_bn: bool = False
    tasks: tuple[str, ...] = TASKS
    head_channels: int = 128


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
    num_workers: int = 1  # Ray Train workers
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
    loader_workers: int = 0  # DataLoader processes per Ray worker (0: load in the training process)
    fault_at_epoch: int | None = None  # testing hook: a worker dies mid-epoch once, here


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: $RAY_ADDRESS, else a local Ray on 127.0.0.1
    num_cpus: int | None = None  # local Ray only; None: all of this machine's CPUs


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db
    experiment: str = "spd"


@dataclass(frozen=True)
class EvaluateConfig:
    flip_tta: bool = False
    batch_size: int = 16
    overlays: int = 8
    out_dir: str = "reports"


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str = "spd-human-parsing"
    max_pixels: int = 40_000_000  # larger inputs are rejected by the served model
    report: str = "reports/registry.json"


@dataclass(frozen=True)
class TuneConfig:
    name: str = "spd-lambda-search"
    num_trials: int = 8
    max_concurrent: int | None = None  # None: as many as the cluster's CPUs/GPUs allow
    lambda_pose: tuple[float, float] = (0.1, 10.0)  # log-uniform, relative to λs
    lambda_densepose: tuple[float, float] = (0.1, 10.0)
    lr: tuple[float, float] | None = None  # log-uniform; None: keep train.lr
    epochs: int = 4
    grace_period: int = 1
    reduction_factor: int = 2
    max_failures: int = 1
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    seed: int = 0
    out_dir: str = "tuning"  # best_params.yaml, trials.csv, lambda_miou.png
    storage_path: str = "tuning/ray_results"  # Tune + trial runs; shared FS or s3:// URI on a cluster


@dataclass(frozen=True)
class AblationConfig:
    task_sets: tuple[str, ...] = ("seg", "seg+pose", "seg+densepose", "seg+pose+densepose")
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 1  # per cell: 12 cells x 1 epoch fit the 30-minute budget on 2 CPU cores
    out_dir: str = "ablation/runs"  # one directory per cell: <task set>-s<seed>/
    report: str = "reports/ablation.md"
    metrics: str = "reports/ablation.json"  # the report's numbers, for `dvc metrics`
    plot: str = "reports/ablation.png"


@dataclass(frozen=True)
class Params:
    synth: SynthConfig = field(default_factory=SynthConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)


# ---------------------------------------------------------------------------------------------
# Range rules: (key path, predicate, what was expected). Checked after the types.
# ---------------------------------------------------------------------------------------------


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _multiple_of_8(v: int) -> bool:
    return v > 0 and v % 8 == 0


def _fraction(v: float) -> bool:
    return 0 < v < 1


def _interval(v: tuple[float, float] | None) -> bool:
    return v is None or (0 < v[0] <= v[1])


_RULES: list[tuple[str, Any, str]] = [
    ("synth.image_size", lambda v: v >= 32, "an integer >= 32"),
    ("synth.train", _positive, "a positive integer"),
    ("synth.val", _positive, "a positive integer"),
    ("synth.cross.count", _positive, "a positive integer"),
    ("prepare.image_size", _multiple_of_8, "a positive multiple of 8"),
    ("prepare.main.val_fraction", _fraction, "a fraction strictly between 0 and 1"),
    ("prepare.cross.val_fraction", _fraction, "a fraction strictly between 0 and 1"),
    ("model.head_channels", _positive, "a positive integer"),
    ("loss.lambda_seg", _non_negative, "a number >= 0"),
    ("loss.lambda_pose", _non_negative, "a number >= 0"),
    ("loss.lambda_densepose", _non_negative, "a number >= 0"),
    ("loss.heatmap_sigma", _positive, "a positive number"),
    ("loss.seg_lovasz", _non_negative, "a number >= 0"),
    ("train.epochs", _positive, "a positive integer"),
    ("train.batch_size", _positive, "a positive integer"),
    ("train.lr", _positive, "a positive number"),
    ("train.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("train.weight_decay", _non_negative, "a number >= 0"),
    ("train.poly_power", _non_negative, "a number >= 0"),
    ("train.warmup_epochs", _non_negative, "a number >= 0"),
    ("train.augment.scale_min", _positive, "a positive number"),
    ("train.augment.scale_max", _positive, "a positive number"),
    ("train.augment.rotate_deg", lambda v: 0 <= v <= 180, "a number in [0, 180]"),
    ("train.num_workers", _positive, "a positive integer"),
    ("train.cpus_per_worker", _positive, "a positive number"),
    ("train.max_failures", lambda v: v >= -1, "an integer >= -1 (-1: retry forever)"),
    ("train.keep_checkpoints", _positive, "a positive integer"),
    ("train.val_every", _positive, "a positive integer"),
    ("train.loader_workers", _non_negative, "an integer >= 0"),
    ("ray.num_cpus", lambda v: v is None or v > 0, "a positive integer or null"),
    ("evaluate.batch_size", _positive, "a positive integer"),
    ("evaluate.overlays", _non_negative, "an integer >= 0"),
    ("register.max_pixels", _positive, "a positive integer"),
    ("tune.num_trials", _positive, "a positive integer"),
    ("tune.max_concurrent", lambda v: v is None or v > 0, "a positive integer or null"),
    ("tune.lambda_pose", _interval, "[low, high] with 0 < low <= high"),
    ("tune.lambda_densepose", _interval, "[low, high] with 0 < low <= high"),
    ("tune.lr", _interval, "null or [low, high] with 0 < low <= high"),
    ("tune.epochs", _positive, "a positive integer"),
    ("tune.grace_period", _positive, "a positive integer"),
    ("tune.reduction_factor", lambda v: v >= 2, "an integer >= 2"),
    ("tune.max_failures", _non_negative, "an integer >= 0"),
    ("tune.workers_per_trial", _positive, "a positive integer"),
    ("tune.cpus_per_worker", _positive, "a positive number"),
    ("ablation.epochs", _positive, "a positive integer"),
]


def _cross_field_checks(p: Params) -> None:
    def fail(key: str, msg: str) -> None:
        raise ConfigError(f"{key}: {msg}")

    tasks = p.model.tasks
    if "seg" not in tasks:
        fail("model.tasks", f"must include 'seg' (segmentation is the main task), got {list(tasks)}")
    for t in tasks:
        if t not in TASKS:
            fail("model.tasks", f"unknown task {t!r}; expected a subset of {list(TASKS)}")
    if len(set(tasks)) != len(tasks):
        fail("model.tasks", f"lists a task twice: {list(tasks)}")
    if p.loss.lambda_seg == p.loss.lambda_pose == p.loss.lambda_densepose == 0:
        fail("loss", "all λ weights are 0; at least one must be positive")
    if p.train.augment.scale_min > p.train.augment.scale_max:
        fail("train.augment.scale_min", "must be <= train.augment.scale_max")
    if p.train.batch_size < p.train.num_workers:
        fail("train.batch_size", f"must be >= train.num_workers ({p.train.num_workers})")
    for i, ts in enumerate(p.ablation.task_sets):
        parts = ts.split("+")
        if "seg" not in parts or any(t not in TASKS for t in parts):
            fail(f"ablation.task_sets[{i}]", f"expected tasks joined by '+' including seg, got {ts!r}")
    if p.tune.grace_period > p.tune.epochs:
        fail("tune.grace_period", f"must be <= tune.epochs ({p.tune.epochs})")
    if not p.ablation.seeds:
        fail("ablation.seeds", "expected at least one seed")
    for key, values in (("ablation.task_sets", p.ablation.task_sets), ("ablation.seeds", p.ablation.seeds)):
        if len(set(values)) != len(values):
            fail(key, f"lists an entry twice: {list(values)} (each cell must be unique)")
    for i, ts in enumerate(p.ablation.task_sets):
        if len(set(ts.split("+"))) != len(ts.split("+")):
            fail(f"ablation.task_sets[{i}]", f"lists a task twice: {ts!r}")


# ---------------------------------------------------------------------------------------------
# Generic dataclass <- dict conversion with key-path errors.
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


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    wrong = ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise wrong
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path)
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
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise wrong
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
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


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown key; expected one of {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            path = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _convert(raw[f.name], hints[f.name], path)
    return cls(**kwargs)


def _get(obj: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if obj is None or not hasattr(obj, part):
            return False, None
        obj = getattr(obj, part)
    return True, obj


def params_from_dict(raw: dict, source: str = "params") -> Params:
    """Validate a raw mapping into `Params`; raise ConfigError naming the file and key path."""
    try:
        if not isinstance(raw, dict):
            raise ConfigError(f"top level: expected a mapping of sections, got {type(raw).__name__}")
        params = _build(Params, raw, "")
        for path, ok, expected in _RULES:
            present, value = _get(params, path)
            if present and value is not None and not ok(value):
                raise ConfigError(f"{path}: expected {expected}, got {value!r}")
        _cross_field_checks(params)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return params


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], value parsed as YAML, so 3 is int and [1,2] a list)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value is not valid YAML ({e})") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of `raw` with each `key.path=value` applied (sections are created as needed)."""
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[: i + 1])} is not a section")
            node = nxt
        node[keys[-1]] = value
    return out


def read_params_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read params file ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return raw if raw is not None else {}


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read, override and validate a params file. Raises ConfigError with the key path."""
    raw = read_params_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level: expected a mapping of sections")
    return params_from_dict(apply_overrides(raw, overrides or []), source=str(path))


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


# ---------------------------------------------------------------------------------------------
# Tuning results: the one place where `loss.from_tuning` takes effect.
# ---------------------------------------------------------------------------------------------

TUNING_KEYS = ("lambda_pose", "lambda_densepose", "lr")  # what best_params.yaml may set


def read_tuning_results(path: str | Path) -> dict[str, float]:
    """λp, λd (relative to λs) and optionally lr from a best_params.yaml written by `spd tune`."""
    path = Path(path)
    raw = read_params_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping written by `spd tune`")
    out: dict[str, float] = {}
    for key in TUNING_KEYS:
        if key not in raw:
            if key == "lr":
                continue
            raise ConfigError(f"{path}: {key}: missing (expected a positive number written by `spd tune`)")
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{path}: {key}: expected a positive number, got {value!r}")
        out[key] = float(value)
    return out


def apply_tuning_results(params: Params, root: str | Path) -> Params:
    """`params` with λp = λs·rel_p, λd = λs·rel_d (and lr, if searched) from `loss.tuning_file`,
    when `loss.from_tuning` is true; otherwise `params` unchanged. Relative paths start at `root`."""
    if not params.loss.from_tuning:
        return params
    path = Path(params.loss.tuning_file)
    if not path.is_absolute():
        path = Path(root) / path
    if not path.is_file():
        raise ConfigError(
            f"loss.tuning_file: {path} not found; run the search first (`dvc repro tuning/dvc.yaml` "
            "or `spd tune`), or set loss.from_tuning: false"
        )
    found = read_tuning_results(path)
    lam_s = params.loss.lambda_seg
    loss = replace(
        params.loss,
        lambda_pose=lam_s * found["lambda_pose"],
        lambda_densepose=lam_s * found["lambda_densepose"],
    )
    train = replace(params.train, lr=found["lr"]) if "lr" in found else params.train
    return replace(params, loss=loss, train=train)
