"""`spd ablation`: the paper's task ablation — one cell (task set x seed) at a time, then the report.

`spd ablation data` packs the raw data once more at `ablation.image_size` (cells are many and each
must converge, so they may train smaller than the main model). `spd ablation run --tasks seg+pose
--seed 1` trains one model on that copy through the same Ray Train path as `spd train` (only
model.tasks, train.seed, train.epochs, train.epoch_images and the paths differ), evaluates it
in-domain and, via the shared coarse groups, on the cross-domain dataset, and writes
`<ablation.out_dir>/<cell>/metrics.json`. `spd ablation report` (pipeline/ablation_report.py)
aggregates every cell named by ablation.task_sets x ablation.seeds into reports/ablation.{md,json,png}
and one MLflow parent run with a nested run per cell. `ablation/dvc.yaml` runs the cells as a DVC
matrix, then the report.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from pipeline.config import Params
from spd.config import replace
from spd.errors import SpdError

# (key in a cell's metrics.json, column heading). PCKh only exists for task sets with pose.
METRICS: tuple[tuple[str, str], ...] = (
    ("miou", "in-domain mIoU"),
    ("miou_lr", "left/right parts mIoU"),
    ("miou_rest", "other classes mIoU"),
    ("pixel_acc", "pixel acc"),
    ("mean_acc", "mean acc"),
    ("cross_miou", "cross-domain mIoU"),
    ("pckh", "PCKh@0.5"),
)


def cell_name(task_set: str, seed: int) -> str:
    return f"{task_set}-s{seed}"


def braced(task_set: str) -> str:
    """'seg+pose' -> '{seg, pose}', as the paper writes task sets."""
    return "{" + task_set.replace("+", ", ") + "}"


def cell_dir(params: Params, root: Path, task_set: str, seed: int) -> Path:
    return root / params.ablation.out_dir / cell_name(task_set, seed)


# ---------------------------------------------------------------------------------------------
# One cell: train + evaluate
# ---------------------------------------------------------------------------------------------


def data_params(params: Params) -> Params:
    """The root config with `prepare` pointed at the ablation's own copy of the data: the same raw
    sources packed at `ablation.image_size` into `ablation.data_out`/{main,cross}."""
    out, prepare = Path(params.ablation.data_out), params.prepare
    prepare = replace(
        prepare,
        image_size=params.ablation.image_size,
        main=replace(prepare.main, out=str(out / "main")),
        cross=None if prepare.cross is None else replace(prepare.cross, out=str(out / "cross")),
    )
    return replace(params, prepare=prepare)


def cell_params(params: Params, task_set: str, seed: int) -> Params:
    """The training configuration of one cell: the main config with only the ablated knobs changed
    (and the ablation's data)."""
    name = cell_name(task_set, seed)
    out = Path(params.ablation.out_dir) / name
    model = replace(params.model, tasks=tuple(task_set.split("+")))
    train = replace(
        params.train,
        seed=seed,
        epochs=params.ablation.epochs,
        epoch_images=params.ablation.epoch_images,
        run_name=f"ablation-{name}",
        model_out=str(out / "model.pt"),
        report=str(out / "train.json"),
        history=str(out / "train_history.csv"),
    )
    return replace(data_params(params), model=model, train=train)


def run_cell(params: Params, root: Path, task_set: str, seed: int, log_to_mlflow: bool = True) -> dict:
    """Train and evaluate one cell; write and return its metrics (flat, for `dvc metrics`)."""
    from pipeline.evaluate import evaluate_model
    from pipeline.train import run_training
    from spd.io import atomic_write_json
    from spd.labels import LABEL_SETS

    if task_set not in params.ablation.task_sets:
        raise SpdError(
            f"--tasks {task_set!r}: not one of ablation.task_sets {list(params.ablation.task_sets)}"
        )
    cfg = cell_params(params, task_set, seed)
    name = cell_name(task_set, seed)
    print(f"ablation cell {name}: training {cfg.train.epochs} epoch(s) on tasks {list(cfg.model.tasks)}")
    t0 = time.perf_counter()
    result = run_training(
        cfg,
        run_name=cfg.train.run_name,
        project_root=root,
        tags={"spd.stage": "ablation", "spd.ablation_cell": name},
        log_to_mlflow=log_to_mlflow,
    )
    t_train = time.perf_counter() - t0
    evaluation = evaluate_model(cfg, result.model_path, project_root=root)
    ev = evaluation["metrics"]
    t_total = time.perf_counter() - t0
    metrics = cell_metrics_from_evaluation(ev, cfg.model.tasks)
    record = {
        "task_set": task_set,
        "seed": seed,
        **metrics,
        "cross_label_set": (ev.get("cross") or {}).get("label_set"),
        # in-domain, by class name: the report groups them (left/right parts vs the rest)
        "per_class_iou": dict(zip(LABEL_SETS[evaluation["label_set"]], map(_number, ev["per_class_iou"]))),
        "epochs": cfg.train.epochs,
        # [[epoch, val mIoU], ...]: the report judges convergence from it
        "val_miou_history": [[r["epoch"], r["val_miou"]] for r in result.history if "val_miou" in r],
        "train_seconds": round(t_train, 2),
        "total_seconds": round(t_total, 2),
        "train_run_id": result.mlflow_run_id,
        "ray_run": result.run_name,
    }
    atomic_write_json(cell_dir(params, root, task_set, seed) / "metrics.json", record)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None)
    print(f"ablation cell {name}: {shown} ({t_total:.0f} s)")
    return record


def _number(v: Any) -> float | None:  # NaN (nothing to measure) -> None: valid JSON, skipped in means
    return float(v) if v is not None and math.isfinite(v) else None


def cell_metrics_from_evaluation(ev: dict, tasks: tuple[str, ...]) -> dict[str, float | None]:
    """The ablation's columns picked out of the evaluation's metrics dict."""
    cross = ev.get("cross") or {}
    return {
        "miou": _number(ev["miou"]),
        "pixel_acc": _number(ev["pixel_acc"]),
        "mean_acc": _number(ev["mean_acc"]),
        "cross_miou": _number(cross.get("coarse_miou")),
        "pckh": _number(ev.get("pckh")) if "pose" in tasks else None,
    }


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # One flat parser (not nested subparsers) so --params/--set work before or after the action.
    parser.add_argument(
        "action",
        choices=("data", "run", "report"),
        help="data: pack the cells' data at ablation.image_size; run: train + evaluate one cell "
        "(task set x seed); report: aggregate all cells",
    )
    parser.add_argument("--tasks", help="run: task set, e.g. seg+pose (one of ablation.task_sets)")
    parser.add_argument("--seed", type=int, help="run: training seed")
    parser.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow")
    parser.add_argument("--no-progress", action="store_true", help="data: no progress bar")


def run(params: Params, args: argparse.Namespace) -> int:
    from pipeline.runtime import project_root

    root = project_root(args.params)
    if args.action == "data":
        from pipeline import prepare

        return prepare.run(data_params(params), args)
    if args.action == "run":
        if args.tasks is None or args.seed is None:
            raise SpdError("spd ablation run needs --tasks TASK_SET and --seed N")
        run_cell(params, root, args.tasks, args.seed, log_to_mlflow=not args.no_mlflow)
    else:
        from pipeline.ablation_report import write_report

        write_report(params, root, log_mlflow=not args.no_mlflow)
    return 0
