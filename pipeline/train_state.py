"""A training run's identity and what lets it resume: fingerprint, MLflow run, checkpoint state.

The Ray run is named `<train.run_name>-<fingerprint>`: the fingerprint covers everything that changes
the trained weights (model, loss, training knobs, the prepared data, the code), so re-running the same
configuration resumes its latest checkpoint (or, when it already finished, only rewrites the
outputs), while changed params or data start a fresh run instead of resuming a stale one. The MLflow
run is found again by the Ray run's path, so a resumed run keeps logging into the same MLflow run.

Each epoch's checkpoint holds `STATE_FILE` (weights, optimizer, scheduler, history, written by rank
0) and one RNG state per worker, so a resumed epoch draws the same augmentations as the lost one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

from pipeline import runtime
from pipeline.config import Params
from spd.config import flatten, params_to_dict
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
    "ray_workers",
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


# ---------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------


def weights_train_config(params: Params) -> dict[str, Any]:
    """The `train` knobs that change the trained weights (the operational ones left out)."""
    return {k: v for k, v in params_to_dict(params.train).items() if k not in OPERATIONAL_TRAIN_KEYS}


def hash_prepared_data(h: Any, data_dir: Path) -> None:
    """Feed the prepared train/val splits into hash `h`: manifests whole, arrays by name and size."""
    for split in ("train", "val"):
        for f in sorted((data_dir / split).glob("*")):
            if f.name == "manifest.json":  # ids, sizes, histograms: changes with the data
                h.update(f.read_bytes())
            elif f.is_file():
                h.update(f"{f.name}:{f.stat().st_size}".encode())


def run_fingerprint(params: Params, data_dir: Path) -> str:
    """Hash of what determines the trained weights: model, loss, training knobs, data, code."""
    weights_config = [params_to_dict(params.model), params_to_dict(params.loss), weights_train_config(params)]
    h = hashlib.sha256(json.dumps(weights_config, sort_keys=True).encode())
    hash_prepared_data(h, data_dir)
    for src in code_files():  # the library and the training loop: changed code retrains, as DVC expects
        h.update(src.read_bytes())
    return h.hexdigest()[:10]


def code_files() -> list[Path]:
    """The sources that determine a trained model: the `spd` library and the per-worker loop."""
    import spd

    loop = Path(__file__).with_name("train_loop.py")
    return sorted(Path(spd.__file__).parent.rglob("*.py")) + [loop]


def check_prepared(root: Path, params: Params, made_by: str = "prepare.main.out; run `spd prepare`") -> Path:
    """The prepared data directory (prepare.main.out); SpdError when a split is missing, saying
    which key names it and which command `made_by` it."""
    data_dir = Path(runtime.resolve_path(root, params.prepare.main.out))
    for split in ("train", "val"):
        if not (data_dir / split / "manifest.json").is_file():
            raise SpdError(f"{data_dir / split}: no prepared data ({made_by} first)")
    return data_dir


# ---------------------------------------------------------------------------------------------
# The MLflow run of a Ray run
# ---------------------------------------------------------------------------------------------


def open_mlflow_run(
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


def end_mlflow_run(uri: str | None, run_id: str | None, status: str) -> None:
    if uri and run_id:
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).set_terminated(run_id, status=status)


def provenance_tags(root: Path, params: Params) -> dict[str, str]:
    """git commit and DVC data hash of the run's inputs (each only when known)."""
    tags = {}
    commit = runtime.git_commit(root)
    dhash = runtime.data_hash(root, params.prepare.main.out)
    if commit:
        tags["git_commit"] = commit
    if dhash:
        tags["data_hash"] = dhash
    return tags


# ---------------------------------------------------------------------------------------------
# Checkpoint state
# ---------------------------------------------------------------------------------------------


def read_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The `STATE_FILE` dict of a checkpoint directory (weights, optimizer, history, ...)."""
    import torch

    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)


def checkpoint_history(checkpoint: Any, filesystem: Any = None) -> list[dict[str, float]]:
    """The per-epoch metrics a Ray Train checkpoint (or its path) carries; `filesystem`: the pyarrow
    file system a path is on (object storage, see pipeline.storage), None for a local path."""
    from ray.train import Checkpoint

    if not isinstance(checkpoint, Checkpoint):
        checkpoint = Checkpoint(str(checkpoint), filesystem=filesystem)
    with checkpoint.as_directory() as d:
        return list(read_state(d).get("history", []))


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """This process's torch, numpy and Python RNG states, as a weights_only-loadable dict."""
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


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    v, internal, g = json.loads(state["python"])
    random.setstate((v, tuple(internal), g))


# ---------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------


def history_csv(history: list[dict[str, float]]) -> str:
    """One row per epoch; columns present in no row (e.g. a disabled task's loss) are left out."""
    cols = [c for c in HISTORY_COLUMNS if any(c in r for r in history)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in history:
        w.writerow({c: r.get(c, "") for c in cols})
    return buf.getvalue()


def best_epoch(history: list[dict[str, float]]) -> dict[str, float]:
    """The metrics of the epoch with the highest SCORE_KEY ({} when no epoch was validated)."""
    scored = [r for r in history if SCORE_KEY in r]
    return dict(max(scored, key=lambda r: r[SCORE_KEY])) if scored else {}
