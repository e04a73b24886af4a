"""What every Ray/MLflow stage (train, tune, ablation, cluster runs) needs from its surroundings.

Ray: a local instance on 127.0.0.1 unless `ray.address` or `$RAY_ADDRESS` names a cluster; an
already-initialised Ray (tests, Tune trials) is reused. MLflow: `sqlite:///<project>/mlflow.db` with
artifacts in `<project>/mlartifacts`, unless `mlflow.tracking_uri` or `$MLFLOW_TRACKING_URI` points
elsewhere; a server that does not answer is reported before any work starts. Heavy imports stay
inside the functions so importing this module is cheap.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import MlflowConfig, RayConfig
from pipeline.ray_loopback import loopback_only
from spd.errors import SpdError

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"


def project_root(params_file: str | Path | None = None) -> Path:
    """The directory holding the params file (where stages run and relative paths start)."""
    if params_file is not None:
        return Path(params_file).resolve().parent
    return Path.cwd().resolve()


def resolve_path(root: Path, path: str) -> str:
    """A params path made absolute against the project root; URIs (s3://, gs://, ...) pass through."""
    if "://" in path:
        return path
    p = Path(path)
    return str(p if p.is_absolute() else (root / p).resolve())


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------


def ray_address(cfg: RayConfig) -> str | None:
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def init_ray(cfg: RayConfig) -> None:
    """Connect to the configured cluster, or start a loopback-only local Ray; reuse one already up."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = ray_address(cfg)
    try:
        if address:
            ray.init(address=address, configure_logging=False)
        else:
            loopback_only()
            # The dashboard serves Ray's state API, which Ray Train's PlacementGroupCleaner polls
            # to free a dead run's reservation; without it that actor warns every second.
            ray.init(
                num_cpus=cfg.num_cpus,
                _node_ip_address="127.0.0.1",
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                configure_logging=False,
            )
    except (ConnectionError, TimeoutError, RuntimeError) as e:
        where = f"the Ray cluster at {address} (ray.address / $RAY_ADDRESS)" if address else "a local Ray"
        raise SpdError(f"cannot start or join {where}: {e}") from None


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------


def tracking_uri(cfg: MlflowConfig, root: Path) -> str:
    """`mlflow.tracking_uri`, else `$MLFLOW_TRACKING_URI`, else sqlite:///<root>/mlflow.db."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(root / MLFLOW_DB).resolve()}"


def artifact_location(uri: str) -> str | None:
    """For a local sqlite store: `mlartifacts/` next to the database file. Servers decide their own."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / MLFLOW_ARTIFACTS).resolve().as_uri()
    return None


def check_tracking_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (SpdError) when an http(s) tracking server does not answer or the sqlite dir is missing."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                if resp.status >= 500:
                    raise SpdError(f"MLflow tracking server {uri} answered HTTP {resp.status} at /health")
        except urllib.error.HTTPError as e:
            if e.code >= 500:
                raise SpdError(f"MLflow tracking server {uri} answered HTTP {e.code} at /health") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SpdError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it, or point "
                "mlflow.tracking_uri / $MLFLOW_TRACKING_URI at a running server"
            ) from None
    elif scheme == "sqlite":
        db = Path(uri[len("sqlite:///") :])
        if not db.parent.is_dir():
            raise SpdError(f"MLflow tracking URI {uri}: directory {db.parent} does not exist")


def get_or_create_experiment(client: Any, name: str, uri: str) -> str:
    """Experiment id by name, created (artifacts next to a sqlite db) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    except Exception:  # created concurrently by another stage or trial
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ---------------------------------------------------------------------------------------------
# DVC metrics files
# ---------------------------------------------------------------------------------------------

METRICS_DIR = "metrics"  # numeric summaries of the optional pipelines (ablation, search)


def numeric_only(doc: dict) -> dict:
    """`doc` without its non-numeric leaves (names, paths, run ids, flags, None), for `dvc metrics`."""
    out: dict = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            if inner := numeric_only(value):
                out[key] = inner
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out


def metrics_path(report: str) -> str:
    """The numeric metrics file beside a stage report: reports/train.json -> reports/train_metrics.json."""
    p = Path(report)
    return str(p.with_name(f"{p.stem}_metrics{p.suffix or '.json'}"))


# ---------------------------------------------------------------------------------------------
# Provenance tags
# ---------------------------------------------------------------------------------------------


def git_commit(root: Path) -> str | None:
    """HEAD of the project's git repository (with '-dirty' if tracked files changed), or None."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def data_hash(root: Path, data_path: str) -> str | None:
    """The DVC hash of `data_path` (an output in dvc.lock), or None when DVC has not recorded it."""
    lock = root / "dvc.lock"
    try:
        doc = yaml.safe_load(lock.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    want = os.path.normpath(data_path)
    for stage in (doc.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if os.path.normpath(str(out.get("path", ""))) == want:
                return out.get("md5") or out.get("hash") or out.get("etag")
    return None
