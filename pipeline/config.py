"""The pipeline's configuration: params.yaml parsed once into typed, frozen objects.

Every stage loads the whole file through `load_params`, so a mistake anywhere is reported before
any work starts, with the key path and what was expected (`loss.lambda_seg: expected a number
>= 0, got -1`). The result (`Params`) travels as it is: to Ray Train workers, Tune trials and
ablation cells (it pickles); nothing downstream re-parses a dict.

params.yaml is the one source of defaults: these sections have none, and `load_params` rejects a
file that leaves a key out (naming it). The library's sections (model, loss, train) come from
`spd.config`, parsed by the same `spd.config.from_dict`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from spd.config import (
    TASKS,
    ConfigError,
    LossConfig,
    ModelConfig,
    SourceConfig,
    TrainConfig,
    from_dict,
    replace,
)

# ---------------------------------------------------------------------------------------------
# Sections (no defaults: params.yaml holds them).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthCrossConfig:
    """A second, shifted synthetic domain written in the ATR layout (cross-dataset evaluation)."""

    enabled: bool
    count: int
    seed: int
    out: str


@dataclass(frozen=True)
class SynthConfig:
    seed: int
    image_size: int  # longest side of the generated images (sizes vary below it)
    train: int
    val: int
    out: str
    cross: SynthCrossConfig


@dataclass(frozen=True)
class PrepareConfig:
    image_size: int  # packed square size; must be a multiple of 8
    bad_data: Literal["fail", "skip"]
    main: SourceConfig
    cross: SourceConfig | None  # second dataset for cross-dataset evaluation


@dataclass(frozen=True)
class RayConfig:
    address: str | None  # None: $RAY_ADDRESS, else a local Ray on 127.0.0.1
    num_cpus: int | None  # local Ray only; None: all of this machine's CPUs


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlflow.db
    experiment: str


@dataclass(frozen=True)
class EvaluateConfig:
    flip_tta: bool
    batch_size: int
    overlays: int
    out_dir: str


@dataclass(frozen=True)
class RegisterConfig:
    model_name: str
    max_pixels: int  # larger inputs are rejected by the served model
    report: str


@dataclass(frozen=True)
class TuneConfig:
    name: str
    num_trials: int
    max_concurrent: int | None  # None: as many as the cluster's CPUs/GPUs allow
    lambda_pose: tuple[float, float]  # log-uniform, relative to λs
    lambda_densepose: tuple[float, float]
    lr: tuple[float, float] | None  # log-uniform; None: keep train.lr
    epochs: int
    epoch_images: int | None  # images per trial epoch (an ASHA rung unit); None: a pass over the split
    grace_period: int
    reduction_factor: int
    max_failures: int
    workers_per_trial: int
    cpus_per_worker: float
    seed: int
    check_seeds: tuple[int, ...]  # the best λ and λ = 1 re-trained on these (tuning/seed_check.py)
    out_dir: str  # best_params.yaml, trials.csv, lambda_miou.png
    storage_path: str  # Tune + trial runs; shared FS or s3:// URI on a cluster


@dataclass(frozen=True)
class AblationConfig:
    task_sets: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int  # per cell
    epoch_images: int | None  # images per cell epoch (train.epoch_images); None: a pass over the split
    image_size: int  # the cells train and are scored on their own copy of the data at this size
    data_out: str  # ... packed here (main/, cross/) by `spd ablation data`
    out_dir: str  # one directory per cell: <task set>-s<seed>/
    report: str
    metrics: str  # the report's numbers, for `dvc metrics`
    plot: str
    confidence: float  # the report's statistics (pipeline/ablation_stats.py): CI level,
    power: float  # power at which the minimum detectable effect (MDE) is computed,
    mde_target: float  # the MDE a decisive ablation must reach,
    floor_miou: float  # usefulness floor of a cell's in-domain mIoU,
    converge_epochs: int  # convergence: over the last this-many validated epochs ...
    converge_slope: float  # ... val mIoU rises at most this much per epoch


@dataclass(frozen=True)
class Params:
    synth: SynthConfig
    prepare: PrepareConfig
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    ray: RayConfig
    mlflow: MlflowConfig
    evaluate: EvaluateConfig
    register: RegisterConfig
    tune: TuneConfig
    ablation: AblationConfig


def trial_batch_size(p: Params) -> int:
    """A search trial's global batch: train.batch_size, raised so each of its workers gets one."""
    return max(p.train.batch_size, p.tune.workers_per_trial)


# ---------------------------------------------------------------------------------------------
# Range rules: (key path, predicate, what was expected). Checked after the types.
# ---------------------------------------------------------------------------------------------


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _positive_or_null(v: Any) -> bool:
    return v is None or v > 0


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
    ("train.ray_workers", _positive, "a positive integer"),
    ("train.cpus_per_worker", _positive, "a positive number"),
    ("train.max_failures", lambda v: v >= -1, "an integer >= -1 (-1: retry forever)"),
    ("train.keep_checkpoints", _positive, "a positive integer"),
    ("train.val_every", _positive, "a positive integer"),
    ("train.loader_workers", _non_negative, "an integer >= 0"),
    ("train.epoch_images", _positive_or_null, "a positive integer or null"),
    ("ray.num_cpus", _positive_or_null, "a positive integer or null"),
    ("evaluate.batch_size", _positive, "a positive integer"),
    ("evaluate.overlays", _non_negative, "an integer >= 0"),
    ("register.max_pixels", _positive, "a positive integer"),
    ("tune.num_trials", _positive, "a positive integer"),
    ("tune.max_concurrent", _positive_or_null, "a positive integer or null"),
    ("tune.lambda_pose", _interval, "[low, high] with 0 < low <= high"),
    ("tune.lambda_densepose", _interval, "[low, high] with 0 < low <= high"),
    ("tune.lr", _interval, "null or [low, high] with 0 < low <= high"),
    ("tune.epochs", _positive, "a positive integer"),
    ("tune.epoch_images", _positive_or_null, "a positive integer or null"),
    ("tune.grace_period", _positive, "a positive integer"),
    ("tune.reduction_factor", lambda v: v >= 2, "an integer >= 2"),
    ("tune.max_failures", _non_negative, "an integer >= 0"),
    ("tune.workers_per_trial", _positive, "a positive integer"),
    ("tune.cpus_per_worker", _positive, "a positive number"),
    ("ablation.epochs", _positive, "a positive integer"),
    ("ablation.epoch_images", _positive_or_null, "a positive integer or null"),
    ("ablation.image_size", _multiple_of_8, "a positive multiple of 8"),
    ("ablation.confidence", _fraction, "a fraction strictly between 0 and 1"),
    ("ablation.power", _fraction, "a fraction strictly between 0 and 1"),
    ("ablation.mde_target", _positive, "a positive number"),
    ("ablation.floor_miou", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("ablation.converge_epochs", lambda v: v >= 2, "an integer >= 2"),
    ("ablation.converge_slope", _non_negative, "a number >= 0"),
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
    for key, images, batch in (
        ("train.epoch_images", p.train.epoch_images, p.train.batch_size),
        ("ablation.epoch_images", p.ablation.epoch_images, p.train.batch_size),
        ("tune.epoch_images", p.tune.epoch_images, trial_batch_size(p)),
    ):
        if images is not None and images < batch:
            fail(key, f"must be >= a batch ({batch} images): an epoch is whole batches")
    if p.train.batch_size < p.train.ray_workers:
        fail("train.batch_size", f"must be >= train.ray_workers ({p.train.ray_workers})")
    for i, ts in enumerate(p.ablation.task_sets):
        parts = ts.split("+")
        if "seg" not in parts or any(t not in TASKS for t in parts):
            fail(f"ablation.task_sets[{i}]", f"expected tasks joined by '+' including seg, got {ts!r}")
    if p.tune.grace_period > p.tune.epochs:
        fail("tune.grace_period", f"must be <= tune.epochs ({p.tune.epochs})")
    if len(set(p.tune.check_seeds)) != len(p.tune.check_seeds):
        fail("tune.check_seeds", f"lists a seed twice: {list(p.tune.check_seeds)}")
    if p.train.seed in p.tune.check_seeds:
        fail(
            "tune.check_seeds",
            f"must not include train.seed ({p.train.seed}), the seed every search trial trains with: "
            "the check re-trains on fresh seeds",
        )
    if not p.ablation.seeds:
        fail("ablation.seeds", "expected at least one seed")
    for key, values in (("ablation.task_sets", p.ablation.task_sets), ("ablation.seeds", p.ablation.seeds)):
        if len(set(values)) != len(values):
            fail(key, f"lists an entry twice: {list(values)} (each cell must be unique)")
    for i, ts in enumerate(p.ablation.task_sets):
        if len(set(ts.split("+"))) != len(ts.split("+")):
            fail(f"ablation.task_sets[{i}]", f"lists a task twice: {ts!r}")


def _get(obj: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if obj is None or not hasattr(obj, part):
            return False, None
        obj = getattr(obj, part)
    return True, obj


# Keys renamed since an earlier release: (section, old, new, why). A file with the old key is refused
# with the new name rather than with "unknown key".
RENAMED_KEYS = (
    (
        "train",
        "num_workers",
        "ray_workers",
        "Ray Train workers; DataLoader processes are train.loader_workers",
    ),
)


def _refuse_renamed_keys(raw: dict) -> None:
    for section, old, new, why in RENAMED_KEYS:
        if isinstance(raw.get(section), dict) and old in raw[section]:
            raise ConfigError(f"{section}.{old}: renamed to {section}.{new} ({why}); rename the key")


def params_from_dict(raw: dict, source: str = "params") -> Params:
    """Validate a raw mapping into `Params`; raise ConfigError naming the file and key path."""
    try:
        if not isinstance(raw, dict):
            raise ConfigError(f"top level: expected a mapping of sections, got {type(raw).__name__}")
        _refuse_renamed_keys(raw)
        params = from_dict(Params, raw)
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
