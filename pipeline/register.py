"""`spd register`: log the trained model as an MLflow pyfunc, register it, gate the `champion` alias.

The new version takes `champion` only if its val mIoU (reports/metrics.json, from `spd evaluate`)
is at least the current champion's; otherwise it gets `challenger`. The decision, with both figures,
goes to `register.report`.

Concurrency guarantee: the read-compare-set of the aliases runs under a registry-wide mutex, so two
`spd register` runs at once (same machine or different machines, sqlite or a tracking server) leave
`champion` on the better of the two (ties: the later one) and `challenger` on the other. The mutex
is a registered model named `<name>.register-lock`: creating a registered model is atomic in every
MLflow backend (a unique key), so exactly one run holds it; the holder deletes it when done, and a
lock left by a crashed run is broken after `STALE_LOCK_S`. The version's mIoU is stored as its tag
`val_miou` before the lock is taken, so every decision compares recorded figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.predict import add_backend_argument
from spd.errors import SpdError
from spd.io import atomic_write_json

CHAMPION, CHALLENGER = "champion", "challenger"
MIOU_TAG = "val_miou"
LOCK_SUFFIX = ".register-lock"
LOCK_WAIT_S = 300.0
STALE_LOCK_S = 600.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-file", default=None, help="model to register (default: train.model_out)")
    parser.add_argument(
        "--metrics", default=None, help="evaluation metrics (default: <evaluate.out_dir>/metrics.json)"
    )
    parser.add_argument(
        "--device", default="auto", help="where the served model runs: auto (CUDA where present), cpu, cuda"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="torch intra-op threads per server process"
    )
    add_backend_argument(parser, "what runs the served network")


def model_card(params: Params, root: Path, model_file: Path, miou: float) -> tuple[dict[str, str], str]:
    """(tags, description) of a registered version: what it learnt from, what it is, how it scored."""
    import hashlib

    from pipeline import runtime
    from spd.config import params_to_dict
    from spd.model.spd import load_model_file

    _, info = load_model_file(model_file)
    cfg, main = info["model_cfg"], params.prepare.main
    val_dataset = f"{main.source} val split ({main.out}/val)"
    tags = {
        "training_data.source": main.source,
        "training_data.root": main.root,
        "training_data.hash": runtime.data_hash(root, main.out) or "unknown (not in dvc.lock)",
        "label_set": info["label_set"],
        "num_classes": str(info["num_classes"]),
        "image_size": str(info["image_size"]),
        "backbone": cfg.backbone,
        "output_stride": str(cfg.output_stride),
        "tasks": ",".join(cfg.tasks),
        "val_dataset": val_dataset,
        "git_commit": runtime.git_commit(root) or "unknown",
        "params_hash": hashlib.sha256(
            json.dumps(params_to_dict(params), sort_keys=True).encode()
        ).hexdigest()[:16],
    }
    use = (
        "A pipeline demonstration: trained on synthetic figures only, its masks of real photographs "
        "are not meaningful. Train on LIP/ATR (prepare.main.source) for real use."
        if main.source == "synthetic"
        else f"Human parsing of photographs like those of {main.source.upper()}."
    )
    tags["intended_use"] = use
    description = (
        f"SPD human parsing: {cfg.backbone} (output stride {cfg.output_stride}), tasks "
        f"{', '.join(cfg.tasks)}, {info['image_size']} px, label set {info['label_set']} "
        f"({info['num_classes']} classes). Trained on {main.source} data from {main.root}. "
        f"Val mIoU {miou:.4f} on the {val_dataset}. Commit {tags['git_commit']}, params hash "
        f"{tags['params_hash']}. {use}"
    )
    return tags, description


def read_metrics(path: Path) -> tuple[float, dict[str, float]]:
    """(val mIoU, every numeric metric to log) from `spd evaluate`'s metrics.json."""
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpdError(f"{path}: metrics not found; run `spd evaluate` first") from None
    except (OSError, json.JSONDecodeError) as e:
        raise SpdError(f"{path}: cannot read metrics ({e})") from None
    miou = metrics.get("miou") if isinstance(metrics, dict) else None
    if not isinstance(miou, (int, float)) or isinstance(miou, bool):
        raise SpdError(f"{path}: expected a number under key 'miou', got {miou!r}")
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    flat[f"eval_{key}_{sub}"] = float(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"eval_{key}"] = float(value)
    return float(miou), flat


def training_run_id(client: Any, report: Path) -> str | None:
    """The MLflow run that trained the model (train.report), if it is in this tracking store."""
    from mlflow.exceptions import MlflowException

    try:
        run_id = json.loads(report.read_text()).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        return None
    if not run_id:
        return None
    try:
        client.get_run(run_id)
    except MlflowException:
        return None  # trained against another store: register in a run of its own
    return run_id


def redact(uri: str) -> str:
    """A tracking URI fit for a report: user:password@ removed."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


@contextmanager
def registry_lock(client: Any, name: str) -> Iterator[None]:
    """Hold the registry-wide mutex for `name` (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    lock = name + LOCK_SUFFIX
    owner = json.dumps({"owner": f"{socket.gethostname()}:{os.getpid()}", "since": time.time()})
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            client.create_registered_model(lock, description=owner)
            break
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held_text = client.get_registered_model(lock).description or "{}"
            if time.time() - float(json.loads(held_text).get("since", 0)) > STALE_LOCK_S:
                # Its holder died. Re-read first, so a lock just re-taken by a live run stays.
                if client.get_registered_model(lock).description == held_text:
                    client.delete_registered_model(lock)
                continue
        except (MlflowException, ValueError):
            pass  # released (or being replaced) between our create and get: try again
        if time.monotonic() > deadline:
            raise SpdError(
                f"registered model {lock!r} has been held for over {LOCK_WAIT_S:.0f} s by another "
                "`spd register`; if none is running, delete it in the MLflow UI"
            )
        time.sleep(0.1 + random.random() * 0.2)
    try:
        yield
    finally:
        client.delete_registered_model(lock)


def current_champion(client: Any, name: str) -> tuple[str, float] | None:
    """(version, val mIoU) of the version holding `champion`, or None when no version does."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    tag = mv.tags.get(MIOU_TAG)
    # A champion set by hand without the tag is kept unless beaten by a recorded figure.
    return str(mv.version), float(tag) if tag is not None else float("-inf")


def _figure(miou: float) -> float | None:
    return miou if miou != float("-inf") else None


def gate(client: Any, name: str, version: str, miou: float) -> dict[str, Any]:
    """Move `champion` to `version` if it is at least as good, else mark it `challenger`."""
    with registry_lock(client, name):
        before = current_champion(client, name)
        takes = before is None or miou >= before[1]
        client.set_registered_model_alias(name, CHAMPION if takes else CHALLENGER, version)
        after = client.get_model_version_by_alias(name, CHAMPION)
    champion_before = None if before is None else {"version": before[0], "val_miou": _figure(before[1])}
    return {
        "decision": CHAMPION if takes else CHALLENGER,
        "champion_before": champion_before,
        "champion_after": {
            "version": str(after.version),
            "val_miou": _figure(float(after.tags.get(MIOU_TAG, "-inf"))),
        },
    }


def run(params: Params, args: argparse.Namespace) -> int:
    import mlflow
    from mlflow import MlflowClient

    from pipeline import runtime, serving

    root = runtime.project_root(args.params)
    model_file = Path(runtime.resolve_path(root, args.model_file or params.train.model_out))
    metrics_file = Path(runtime.resolve_path(root, args.metrics or f"{params.evaluate.out_dir}/metrics.json"))
    if not model_file.is_file():
        raise SpdError(f"{model_file}: model file not found; run `spd train` first")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        raise SpdError(f"--device {args.device}: expected auto, cpu, cuda or cuda:N")
    miou, eval_metrics = read_metrics(metrics_file)
    name = params.register.model_name

    uri = runtime.tracking_uri(params.mlflow, root)
    runtime.check_tracking_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    # Log into the training run when it is in this store: the version then links to its params,
    # curves and data hash. Otherwise a run of its own in the configured experiment.
    train_run = training_run_id(client, Path(runtime.resolve_path(root, params.train.report)))
    if train_run:
        active = mlflow.start_run(run_id=train_run)
    else:
        experiment_id = runtime.get_or_create_experiment(client, params.mlflow.experiment, uri)
        active = mlflow.start_run(experiment_id=experiment_id, run_name="register")
    card_tags, description = model_card(params, root, model_file, miou)
    main = params.prepare.main
    options = serving.ServingOptions(
        max_pixels=params.register.max_pixels,
        flip_tta=params.evaluate.flip_tta,
        device=args.device,
        torch_threads=args.torch_threads,
        backend=args.backend,
        model_name=name,
        training_data={"source": main.source, "root": main.root, "label_set": card_tags["label_set"]},
    )
    with active as run:
        mlflow.log_metrics(eval_metrics)
        # Tags, not params: the training run already holds params, and those cannot change.
        mlflow.set_tags({"registered_model": name, "serving.max_pixels": str(params.register.max_pixels)})
        info = serving.log_pyfunc(model_file, options)
    version = str(info.registered_model_version)
    for key, value in {**card_tags, MIOU_TAG: repr(miou), "metrics_file": str(metrics_file)}.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=description)
    outcome = gate(client, name, version, miou)

    report = {
        "model_name": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "run_id": run.info.run_id,
        "tracking_uri": redact(uri),
        "val_miou": miou,
        **outcome,
    }
    atomic_write_json(runtime.resolve_path(root, params.register.report), report)
    before = outcome["champion_before"]
    was = "none" if before is None else f"v{before['version']} at {before['val_miou']}"
    print(f"registered {name} v{version} (val mIoU {miou:.4f}); champion was {was}: {outcome['decision']}")
    return 0
