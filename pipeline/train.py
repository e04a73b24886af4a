"""`spd train`: SPD on Ray Train (TorchTrainer, Ray Train V2), tracked in MLflow — the driver.

`run_training` checks the tracking server, opens (or, on resume, re-opens) one MLflow run
(`train_state`), launches a `TorchTrainer` whose workers run `train_loop.train_loop_per_worker`
and, when it finishes, writes the model file, the report JSON and the per-epoch history CSV
atomically. Re-running the same configuration resumes its latest checkpoint (train_state).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import runtime, train_state
from pipeline.config import Params, apply_tuning_results
from pipeline.storage import describe_storage, ray_storage
from pipeline.train_loop import CONFIG_KEY, LoopConfig, train_loop_per_worker
from spd.errors import SpdError


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    final_metrics: dict[str, float]  # the last epoch's reported metrics
    best_metrics: dict[str, float]  # the reported metrics of the epoch with the best val mIoU
    mlflow_run_id: str | None
    run_name: str  # the Ray run name (train.run_name + fingerprint)
    storage_path: str
    history: list[dict[str, float]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-name", default=None, help="Ray run name prefix (default: train.run_name)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not track this run in MLflow")


def run(params: Params, args: argparse.Namespace) -> int:
    root = runtime.project_root(getattr(args, "params", None))
    result = run_training(
        params,
        run_name=args.run_name,
        project_root=root,
        log_to_mlflow=not args.no_mlflow,
    )
    final = result.final_metrics
    print(
        f"spd train: {result.run_name}: val mIoU {final.get('val_miou', float('nan')):.4f} "
        f"(best {result.best_metrics.get('val_miou', float('nan')):.4f}) -> {result.model_path}"
        + (f"; MLflow run {result.mlflow_run_id}" if result.mlflow_run_id else "")
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def build_trainer(
    params: Params,
    run_name: str,
    storage_path: str,
    *,
    project_root: Path,
    mlflow_tracking_uri: str | None = None,
    mlflow_run_id: str | None = None,
    fingerprint: str | None = None,
    callbacks: list | None = None,
    verbose: bool = True,
    local_mode: bool = False,
) -> Any:
    """A TorchTrainer for `train_loop_per_worker` with scaling, failure and checkpoint config from params.

    `storage_path` is absolute (or a URI); the run lives in `<storage_path>/<run_name>` and the same
    pair resumes it. `callbacks` are Ray Train UserCallbacks (Tune passes its TuneReportCallback).
    `local_mode`: Ray Train's local mode (no worker actors; the loop runs in this process) for
    debugging and for measuring what Ray itself costs.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = params.train
    ray_storage_path, storage_filesystem = ray_storage(storage_path)  # s3:// -> pyarrow S3
    fault_marker = None
    if t.fault_at_epoch is not None and "://" not in storage_path:
        fault_marker = str(Path(storage_path) / run_name / train_state.FAULT_MARKER)
    job = LoopConfig(
        params=params,
        project_root=str(project_root),
        mlflow_tracking_uri=mlflow_tracking_uri,
        mlflow_run_id=mlflow_run_id,
        fault_marker=fault_marker,
        fingerprint=fingerprint,
        verbose=verbose,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={CONFIG_KEY: job},
        scaling_config=ScalingConfig(
            num_workers=0 if local_mode else t.ray_workers,
            use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker},
            placement_strategy=t.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=ray_storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.keep_checkpoints,
                checkpoint_score_attribute=train_state.SCORE_KEY,
                checkpoint_score_order="max",
            ),
            callbacks=callbacks or [],
            # Ray Train logs every report ("Reporting training result ...: TrainingReport(...)")
            # and checkpoint at INFO; the loop prints its own line per epoch instead.
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def run_training(
    params: Params,
    *,
    run_name: str | None = None,
    project_root: Path,
    tags: dict[str, str] | None = None,
    mlflow_parent_run_id: str | None = None,
    log_to_mlflow: bool = True,
) -> TrainResult:
    """Train on Ray Train and write train.model_out, train.report and train.history (atomically)."""
    root = Path(project_root).resolve()
    params = apply_tuning_results(params, root)  # loss.from_tuning: λ (and lr) found by `spd tune`
    t = params.train
    fingerprint = train_state.run_fingerprint(params, train_state.check_prepared(root, params))
    ray_run = f"{run_name or t.run_name}-{fingerprint}"
    storage = runtime.resolve_path(root, t.storage_path)

    uri = run_id = None
    if log_to_mlflow:
        uri = runtime.tracking_uri(params.mlflow, root)
        runtime.check_tracking_reachable(uri)
        run_tags = {**train_state.provenance_tags(root, params), **(tags or {})}
        run_id = train_state.open_mlflow_run(
            params, uri, run_name or t.run_name, f"{storage}/{ray_run}", run_tags, mlflow_parent_run_id
        )

    runtime.init_ray(params.ray)
    trainer = build_trainer(
        params,
        ray_run,
        storage,
        project_root=root,
        mlflow_tracking_uri=uri,
        mlflow_run_id=run_id,
        fingerprint=fingerprint,
    )
    checkpoint = _fit(trainer, f"{storage}/{ray_run}", uri, run_id)
    with checkpoint.as_directory() as d:
        state = train_state.read_state(d)
    model_path, history = _write_outputs(params, root, state, ray_run, storage, run_id)
    train_state.end_mlflow_run(uri, run_id, "FINISHED")
    final = dict(history[-1]) if history else {}
    best = train_state.best_epoch(history)
    return TrainResult(model_path, final, best, run_id, ray_run, storage, history)


def _fit(trainer: Any, run_dir: str, uri: str | None, run_id: str | None) -> Any:
    """trainer.fit() -> its last checkpoint; the MLflow run ends KILLED/FAILED when it does not finish."""
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        train_state.end_mlflow_run(uri, run_id, "KILLED")
        raise
    except Exception as e:  # TrainingFailedError (workers out of retries) or a controller error
        train_state.end_mlflow_run(uri, run_id, "FAILED")
        first = str(e).strip().splitlines()
        raise SpdError(
            f"training run {Path(run_dir).name} failed ({type(e).__name__}: {first[0] if first else ''}); "
            f"its checkpoints stay in {describe_storage(run_dir)} and re-running resumes from the latest"
        ) from e
    if result.checkpoint is None:
        train_state.end_mlflow_run(uri, run_id, "FAILED")
        raise SpdError(f"training run {Path(run_dir).name} finished without a checkpoint in {run_dir}")
    return result.checkpoint


def _write_outputs(
    params: Params, root: Path, state: dict, ray_run: str, storage: str, run_id: str | None
) -> tuple[Path, list[dict[str, float]]]:
    """The model file, the history CSV, the report JSON and its numbers-only twin, each atomically."""
    from spd.io import atomic_write_json, atomic_write_text
    from spd.model import build_model, save_model_file

    t = params.train
    num_classes = int(state["num_classes"])
    model = build_model(params.model, num_classes)
    model.load_state_dict(state["model"])
    model_path = Path(runtime.resolve_path(root, t.model_out))
    save_model_file(
        model_path, model, params.model, num_classes, state["label_set"], int(state["image_size"])
    )
    history: list[dict[str, float]] = state["history"]
    final = dict(history[-1]) if history else {}
    atomic_write_text(runtime.resolve_path(root, t.history), train_state.history_csv(history))
    report = {
        "run_name": ray_run,
        "storage_path": storage,
        "mlflow_run_id": run_id,
        "epochs": int(final.get("epoch", 0)),
        "train_tflop": final.get("train_tflop"),
        "images_per_s": _mean([r["images_per_s"] for r in history if "images_per_s" in r]),
        "final": {k: v for k, v in final.items() if k != "epoch"},
        "best": train_state.best_epoch(history),
    }
    atomic_write_json(runtime.resolve_path(root, t.report), report)  # identity + numbers
    metrics = runtime.resolve_path(root, runtime.metrics_path(t.report))
    atomic_write_json(metrics, runtime.numeric_only(report))  # numbers only, for `dvc metrics`
    return model_path, history


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None
