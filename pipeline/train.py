"""`spd train`: SPD on Ray Train (TorchTrainer, Ray Train V2), tracked in MLflow.

The driver (`run_training`) checks the tracking server, opens (or, on resume, re-opens) one MLflow
run, launches a `TorchTrainer` and, when it finishes, writes the model file, the report JSON and the
per-epoch history CSV atomically. Every worker runs `train_loop_per_worker`: DDP (gloo on CPU, NCCL
on GPU), a distributed sampler for training, a duplicate-free validation shard per worker whose
confusion matrix is summed across workers, a checkpoint every epoch, and MLflow logging from rank 0.

The Ray run is named `<train.run_name>-<fingerprint>`: the fingerprint covers everything that changes
the trained weights (model, loss, training knobs, the prepared data, the code), so re-running the same
configuration resumes its latest checkpoint (or, when it already finished, only rewrites the
outputs), while changed params or data start a fresh run instead of resuming a stale one.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import runtime
from spd.config import Params, apply_tuning_results, flatten, params_from_dict, params_to_dict
from spd.errors import SpdError

# Per-epoch metrics reported to Ray (and Tune), logged to MLflow and written to the history CSV.
TRAIN_KEYS = ("train_loss", "train_loss_seg", "train_loss_pose", "train_loss_densepose")
VAL_KEYS = ("val_miou", "val_pixel_acc", "val_mean_acc", "val_pckh", "val_dp_miou", "val_dp_uv_error")
HISTORY_COLUMNS = ("epoch", *TRAIN_KEYS, "lr", "images_per_s", "train_tflop", *VAL_KEYS)
SCORE_KEY = "val_miou"
STATE_FILE = "state.pt"
FAULT_MARKER = "fault_injected"  # under the run's storage dir: the fault hook fires once per run
# Training knobs that do not change the trained weights: left out of the run fingerprint, so a
# resume may change them (more workers, another storage path, the fault hook off).
OPERATIONAL_TRAIN_KEYS = (
    "num_workers",
    "use_gpu",
    "cpus_per_worker",
    "placement_strategy",
    "max_failures",
    "keep_checkpoints",
    "run_name",
    "storage_path",
    "model_out",
    "report",
    "history",
    "fault_at_epoch",
    "loader_workers",
)


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


def run_fingerprint(params: Params, data_dir: Path) -> str:
    """Hash of what determines the trained weights: model, loss, training knobs, data, code."""
    train = {k: v for k, v in params_to_dict(params.train).items() if k not in OPERATIONAL_TRAIN_KEYS}
    weights_config = [params_to_dict(params.model), params_to_dict(params.loss), train]
    h = hashlib.sha256(json.dumps(weights_config, sort_keys=True).encode())
    for split in ("train", "val"):
        for f in sorted((data_dir / split).glob("*")):
            if f.name == "manifest.json":  # ids, sizes, histograms: changes with the data
                h.update(f.read_bytes())
            elif f.is_file():
                h.update(f"{f.name}:{f.stat().st_size}".encode())
    for src in _code_files():  # the library and this loop: changed code retrains, as DVC expects
        h.update(src.read_bytes())
    return h.hexdigest()[:10]


def _code_files() -> list[Path]:
    import spd

    return sorted(Path(spd.__file__).parent.rglob("*.py")) + [Path(__file__)]


def _check_prepared(root: Path, params: Params) -> Path:
    data_dir = Path(runtime.resolve_path(root, params.prepare.main.out))
    for split in ("train", "val"):
        if not (data_dir / split / "manifest.json").is_file():
            raise SpdError(
                f"{data_dir / split}: no prepared data (prepare.main.out); run `spd prepare` first"
            )
    return data_dir


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
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t = params.train
    fault_marker = None
    if t.fault_at_epoch is not None and "://" not in storage_path:
        fault_marker = str(Path(storage_path) / run_name / FAULT_MARKER)
    config = {
        "params": params_to_dict(params),
        "project_root": str(project_root),
        "mlflow_tracking_uri": mlflow_tracking_uri,
        "mlflow_run_id": mlflow_run_id,
        "fault_marker": fault_marker,
        "fingerprint": fingerprint,
        "verbose": verbose,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=0 if local_mode else t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker},
            placement_strategy=t.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.keep_checkpoints,
                checkpoint_score_attribute=SCORE_KEY,
                checkpoint_score_order="max",
            ),
            callbacks=callbacks or [],
        ),
    )


def _open_mlflow_run(
    params: Params,
    uri: str,
    run_name: str,
    ray_run: str,
    tags: dict[str, str],
    parent_run_id: str | None,
) -> str:
    """The MLflow run for this Ray run: the one an interrupted attempt left, else a new one."""
    from mlflow.entities import Param, RunStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp_id = runtime.get_or_create_experiment(client, params.mlflow.experiment, uri)
    found = client.search_runs([exp_id], filter_string=f"tags.`spd.ray_run` = '{ray_run}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id
    all_tags = {"spd.ray_run": ray_run, "spd.stage": "train", **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    flat = [
        Param(k, json.dumps(v) if isinstance(v, list) else str(v))
        for k, v in flatten(params_to_dict(params)).items()
    ]
    for i in range(0, len(flat), 100):
        client.log_batch(run.info.run_id, params=flat[i : i + 100])
    return run.info.run_id


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
    import torch

    from spd.io import atomic_write_json, atomic_write_text
    from spd.model import build_model, save_model_file

    root = Path(project_root).resolve()
    params = apply_tuning_results(params, root)  # loss.from_tuning: λ (and lr) found by `spd tune`
    t = params.train
    data_dir = _check_prepared(root, params)
    fingerprint = run_fingerprint(params, data_dir)
    ray_run = f"{run_name or t.run_name}-{fingerprint}"
    storage = runtime.resolve_path(root, t.storage_path)

    uri = run_id = None
    if log_to_mlflow:
        uri = runtime.tracking_uri(params.mlflow, root)
        runtime.check_tracking_reachable(uri)
        run_tags = {k: v for k, v in (tags or {}).items()}
        commit = runtime.git_commit(root)
        dhash = runtime.data_hash(root, params.prepare.main.out)
        if commit:
            run_tags["git_commit"] = commit
        if dhash:
            run_tags["data_hash"] = dhash
        run_id = _open_mlflow_run(
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
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        _end_mlflow_run(uri, run_id, "KILLED")
        raise
    except Exception as e:  # TrainingFailedError (workers out of retries) or a controller error
        _end_mlflow_run(uri, run_id, "FAILED")
        first = str(e).strip().splitlines()
        raise SpdError(
            f"training run {ray_run} failed ({type(e).__name__}: {first[0] if first else ''}); "
            f"its checkpoints stay in {storage}/{ray_run} and re-running resumes from the latest"
        ) from e
    if result.checkpoint is None:
        _end_mlflow_run(uri, run_id, "FAILED")
        raise SpdError(f"training run {ray_run} finished without a checkpoint in {storage}/{ray_run}")

    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    model = build_model(params.model, int(state["num_classes"]))
    model.load_state_dict(state["model"])
    model_path = Path(runtime.resolve_path(root, t.model_out))
    save_model_file(
        model_path,
        model,
        params.model,
        int(state["num_classes"]),
        state["label_set"],
        int(state["image_size"]),
    )
    history: list[dict[str, float]] = state["history"]
    final = dict(history[-1]) if history else {}
    scored = [r for r in history if SCORE_KEY in r]
    best = dict(max(scored, key=lambda r: r[SCORE_KEY])) if scored else {}
    atomic_write_text(runtime.resolve_path(root, t.history), history_csv(history))
    atomic_write_json(
        runtime.resolve_path(root, t.report),
        {
            "run_name": ray_run,
            "storage_path": storage,
            "mlflow_run_id": run_id,
            "epochs": int(final.get("epoch", 0)),
            "train_tflop": final.get("train_tflop"),
            "images_per_s": _mean([r["images_per_s"] for r in history if "images_per_s" in r]),
            "final": {k: v for k, v in final.items() if k != "epoch"},
            "best": best,
        },
    )
    _end_mlflow_run(uri, run_id, "FINISHED")
    return TrainResult(model_path, final, best, run_id, ray_run, storage, history)


def _end_mlflow_run(uri: str | None, run_id: str | None, status: str) -> None:
    if uri and run_id:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).set_terminated(run_id, status=status)


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def history_csv(history: list[dict[str, float]]) -> str:
    """One row per epoch; columns present in no row (e.g. a disabled task's loss) are left out."""
    cols = [c for c in HISTORY_COLUMNS if any(c in r for r in history)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in history:
        w.writerow({c: r.get(c, "") for c in cols})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Per-worker loop
# ---------------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker. config: params (plain dict), project_root, mlflow_tracking_uri,
    mlflow_run_id (None: no MLflow), fault_marker (path; None: no fault hook), fingerprint, verbose."""
    import ray.train
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from spd.data.dataset import SPDDataset
    from spd.data.packed import PackedSplit
    from spd.engine import build_optimizer, build_scheduler, evaluate, train_one_epoch
    from spd.flops import train_flops_per_image
    from spd.losses import SPDLoss
    from spd.model import build_model
    from spd.precision import autocast_dtype

    params = params_from_dict(config["params"], source="train_loop_config")
    t = params.train
    root = Path(config["project_root"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    device = ray.train.torch.get_device()
    amp_dtype = autocast_dtype(t.bf16, device)

    data_dir = Path(runtime.resolve_path(root, params.prepare.main.out))
    train_split, val_split = PackedSplit(data_dir / "train"), PackedSplit(data_dir / "val")
    num_classes = train_split.num_classes
    train_ds = SPDDataset(train_split, augment=t.augment)
    val_ds = SPDDataset(val_split, augment=None)
    per_worker_batch = max(1, t.batch_size // world)
    sampler = DistributedSampler(
        train_ds, num_replicas=world, rank=rank, shuffle=True, seed=t.seed, drop_last=True
    )
    loading = {
        "num_workers": t.loader_workers,
        "persistent_workers": t.loader_workers > 0,
        "pin_memory": device.type == "cuda",
    }
    train_loader = DataLoader(
        train_ds, batch_size=per_worker_batch, sampler=sampler, drop_last=True, **loading
    )
    # Each val sample on exactly one worker (no padding duplicates): summed confusion matrices equal
    # a single-process evaluation of the whole split.
    val_loader = DataLoader(
        Subset(val_ds, range(rank, len(val_ds), world)), batch_size=per_worker_batch, **loading
    )

    torch.manual_seed(t.seed)  # same initial weights on every worker (DDP also broadcasts them)
    model = build_model(params.model, num_classes)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    net = model.module if hasattr(model, "module") else model
    loss_fn = SPDLoss.from_config(params.model.tasks, params.loss)
    optimizer = build_optimizer(net, t)
    scheduler = build_scheduler(optimizer, t, t.epochs * len(train_loader), len(train_loader))
    # training compute, the yardstick recipes are compared at: FLOPs of this worker's step x workers
    probe = next(iter(DataLoader(train_ds, batch_size=per_worker_batch)))
    images_per_epoch = len(train_loader) * per_worker_batch * world
    tflop_per_epoch = train_flops_per_image(net, loss_fn, probe) * images_per_epoch / 1e12

    history: list[dict[str, float]] = []
    start_epoch = 1
    run_id = config.get("mlflow_run_id")
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history = list(state["history"])
            start_epoch = int(state["epoch"]) + 1
            run_id = run_id or state.get("mlflow_run_id")
            rng = Path(d) / f"rng_rank{rank}.pt"
            if rng.is_file():
                _set_rng_state(torch.load(rng, weights_only=True))
    else:
        _seed_everything(t.seed + rank)

    logger = _RankZeroMlflow(config.get("mlflow_tracking_uri"), run_id) if rank == 0 and run_id else None
    epoch_times: list[float] = []
    for epoch in range(start_epoch, t.epochs + 1):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        fault = (
            _fault_hook(config.get("fault_marker"), len(train_loader) // 2)
            if (t.fault_at_epoch == epoch and rank == world - 1)
            else None
        )
        losses = train_one_epoch(
            model,
            loss_fn,
            optimizer,
            scheduler,
            train_loader,
            device,
            autocast_dtype=amp_dtype,
            channels_last=t.channels_last,
            on_step=fault,
        )
        losses = _mean_across_workers(losses, world)
        metrics: dict[str, float] = {"epoch": epoch, "train_loss": losses["loss"]}
        for task in ("seg", "pose", "densepose"):
            if f"loss_{task}" in losses:
                metrics[f"train_loss_{task}"] = losses[f"loss_{task}"]
        metrics["lr"] = losses["lr"]
        metrics["images_per_s"] = losses["images_per_s"] * world  # mean per worker x workers
        metrics["train_tflop"] = round(epoch * tflop_per_epoch, 2)
        if epoch % t.val_every == 0 or epoch == t.epochs:
            _sync_buffers_from_rank0(net, world)
            ev = evaluate(
                net,
                val_loader,
                device,
                num_classes=num_classes,
                tasks=params.model.tasks,
                autocast_dtype=amp_dtype,
                channels_last=t.channels_last,
            )
            metrics.update(_val_metrics(ev))
        history.append(metrics)
        epoch_times.append(time.perf_counter() - t0)

        with tempfile.TemporaryDirectory() as tmp:
            torch.save(_get_rng_state(), Path(tmp) / f"rng_rank{rank}.pt")
            if rank == 0:
                torch.save(
                    {
                        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "history": history,
                        "mlflow_run_id": run_id,
                        "fingerprint": config.get("fingerprint"),
                        "num_classes": num_classes,
                        "label_set": train_split.label_set,
                        "image_size": int(train_split.manifest["image_size"]),
                    },
                    Path(tmp) / STATE_FILE,
                )
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"epoch_{epoch:04d}",
            )
        if rank == 0:
            if logger is not None:
                logger.log_epoch(metrics, history)
                if SCORE_KEY in metrics:
                    logger.log_overlays(net, val_ds, device, epoch)
            if config.get("verbose", True):
                _print_progress(metrics, epoch, t.epochs, epoch_times)


def _sync_buffers_from_rank0(net: Any, world: int) -> None:
    """Give every worker rank 0's BatchNorm running stats: after the last training step each rank
    has updated them from its own batch, and the evaluated model must be the one checkpointed."""
    import torch.distributed as dist

    if world > 1 and dist.is_initialized():
        for buf in net.buffers():
            dist.broadcast(buf, src=0)


def _mean_across_workers(values: dict[str, float], world: int) -> dict[str, float]:
    """Each worker's per-epoch means averaged over all workers (equal shares of the data)."""
    import torch
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


def _val_metrics(m: dict[str, Any]) -> dict[str, float]:
    """Library metric names -> the flat val_* keys (only those the task set produced)."""
    names = {
        "miou": "val_miou",
        "pixel_acc": "val_pixel_acc",
        "mean_acc": "val_mean_acc",
        "pckh": "val_pckh",
        "dp_miou": "val_dp_miou",
        "dp_uv_error": "val_dp_uv_error",
    }
    return {out: float(m[k]) for k, out in names.items() if k in m and m[k] is not None}


def _print_progress(metrics: dict[str, float], epoch: int, epochs: int, epoch_times: list[float]) -> None:
    eta = (sum(epoch_times) / len(epoch_times)) * (epochs - epoch)
    val = f"val mIoU {metrics['val_miou']:.4f}" if "val_miou" in metrics else "val mIoU   -   "
    # sys.stdout.write, not print: Ray Train routes print() through its logger, which echoes it twice.
    sys.stdout.write(
        f"[spd train] epoch {epoch}/{epochs}  loss {metrics['train_loss']:.4f}  {val}  "
        f"{metrics['images_per_s']:.1f} img/s  lr {metrics['lr']:.2e}  ETA {_hms(eta)}\n"
    )
    sys.stdout.flush()


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _fault_hook(marker: str | None, at_step: int) -> Any:
    """A train_one_epoch on_step hook: this worker process dies at `at_step`, once per run.

    The marker file is written first, so the replacement worker group trains through that epoch.
    """
    if marker is None:
        return None

    def hook(step: int, _values: dict[str, float]) -> None:
        path = Path(marker)
        if step == at_step and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"worker pid {os.getpid()} killed by train.fault_at_epoch\n")
            sys.stdout.write(f"[spd train] fault hook: worker pid {os.getpid()} exits mid-epoch\n")
            sys.stdout.flush()
            # Ray's controller registers the previous epoch's checkpoint asynchronously; a crash
            # before that resumes one checkpoint earlier (correct, but the hook is for tests, which
            # need one outcome), so give the registration time on a loaded machine.
            time.sleep(10)
            os._exit(1)

    return hook


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _get_rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "python": json.dumps(random.getstate()),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    v, internal, g = json.loads(state["python"])
    random.setstate((v, tuple(internal), g))


class _RankZeroMlflow:
    """Rank 0's view of the run's MLflow run: per-epoch metrics, the history CSV, overlays."""

    def __init__(self, uri: str | None, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run_id

    def log_epoch(self, metrics: dict[str, float], history: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        step = int(metrics["epoch"])
        batch = [
            Metric(k, float(v), ts, step) for k, v in metrics.items() if k != "epoch" and math.isfinite(v)
        ]
        self.client.log_batch(self.run_id, metrics=batch)
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "train_history.csv"
            p.write_text(history_csv(history))
            self.client.log_artifact(self.run_id, str(p))

    def log_overlays(self, net: Any, val_ds: Any, device: Any, epoch: int, count: int = 4) -> None:
        self.client.log_image(
            self.run_id, overlay_grid(net, val_ds, device, count), f"overlays/epoch_{epoch:03d}.png"
        )


def overlay_grid(net: Any, dataset: Any, device: Any, count: int = 4) -> Any:
    """(H, count*W, 3) uint8: the first `count` samples with the predicted parsing blended in."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from spd.data.dataset import denormalize
    from spd.labels import palette

    n = min(count, len(dataset))
    images = torch.stack([dataset[i]["image"] for i in range(n)]).to(device)  # (n, 3, S, S)
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        logits = net(images)["seg"].float()  # (n, C, h, w)
        pred = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    net.train(was_training)
    rgb = denormalize(images).astype(np.float32)  # (n, S, S, 3)
    colours = palette()[pred.cpu().numpy()].astype(np.float32)
    blend = (0.5 * rgb + 0.5 * colours).astype(np.uint8)  # (n, S, S, 3)
    return np.concatenate(list(blend), axis=1)
