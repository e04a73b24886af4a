"""The search's outputs, written atomically: trials.csv, best_params.yaml, lambda_miou.png."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Params
from spd.io import atomic_write_bytes, atomic_write_text
from tuning.search import METRIC, STATUS_FAILED, TrialOutcome, trial_status
from tuning.seed_check import SeedCheck

TRIALS_COLUMNS = (
    "trial_id",
    "lambda_pose",
    "lambda_densepose",
    "lr",
    "final_val_miou",
    "best_val_miou",
    "epochs",
    "status",
    "error",
)


def outcome_of(trial: Any, target_epochs: int) -> TrialOutcome:
    """A Tune trial (status, config, reported results) as one table row."""
    last = trial.last_result or {}
    analysis = trial.metric_analysis or {}
    epochs = int(last.get("epoch", 0) or 0)
    errored = trial.status == "ERROR"
    finished = trial.status in ("TERMINATED", "ERROR")
    error = ""
    if errored:
        try:
            text = trial.get_error() or ""
        except OSError:  # the error file is gone (storage moved): the path still says where it was
            text = ""
        error = _last_line(text) or str(trial.error_file or "error")
    cfg = trial.config
    return TrialOutcome(
        trial_id=trial.trial_id,
        lambda_pose=float(cfg["lambda_pose"]),
        lambda_densepose=float(cfg["lambda_densepose"]),
        lr=float(cfg["lr"]) if "lr" in cfg else None,
        final_val_miou=_num(last.get(METRIC)),
        best_val_miou=_num(analysis.get(METRIC, {}).get("max")),
        epochs=epochs,
        status=trial_status(epochs, target_epochs, errored, finished),
        error=error,
    )


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def write_trials_csv(path: Path, outcomes: list[TrialOutcome]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TRIALS_COLUMNS)
    for o in sorted(outcomes, key=lambda o: o.trial_id):
        w.writerow(
            [
                o.trial_id,
                f"{o.lambda_pose:.6g}",
                f"{o.lambda_densepose:.6g}",
                "" if o.lr is None else f"{o.lr:.6g}",
                "" if o.final_val_miou is None else f"{o.final_val_miou:.6f}",
                "" if o.best_val_miou is None else f"{o.best_val_miou:.6f}",
                o.epochs,
                o.status,
                o.error,
            ]
        )
    atomic_write_text(path, buf.getvalue())


def write_search_metrics(
    path: Path, best: TrialOutcome, outcomes: list[TrialOutcome], check: SeedCheck | None = None
) -> None:
    """The best trial's numbers, the trial counts and the seed check's paired gain with its CI,
    for `dvc metrics show` (numbers only)."""
    from spd.io import atomic_write_json

    doc: dict[str, float | int] = {
        "best_val_miou": best.best_val_miou or 0.0,
        "best_lambda_pose_rel": best.lambda_pose,
        "best_lambda_densepose_rel": best.lambda_densepose,
    }
    if best.lr is not None:
        doc["best_lr"] = best.lr
    for status in sorted({o.status for o in outcomes}):
        doc[f"trials_{status}"] = sum(o.status == status for o in outcomes)
    if check is not None and check.delta is not None:
        doc["seed_check_gain"] = check.delta
        if check.ci is not None:
            doc["seed_check_ci_low"], doc["seed_check_ci_high"] = check.ci
    atomic_write_json(path, doc)


def write_best_params(
    path: Path, best: TrialOutcome, params: Params, metric: str, check: SeedCheck | None = None
) -> None:
    """The file `loss.from_tuning` reads (pipeline.config.apply_tuning_results): λ relative to λs;
    and the seed check: is the best λ's gain over λ = 1 beyond seed noise?"""
    doc: dict[str, Any] = {
        "lambda_pose": float(best.lambda_pose),
        "lambda_densepose": float(best.lambda_densepose),
    }
    if best.lr is not None:
        doc["lr"] = float(best.lr)
    doc.update(
        {
            "metric": metric,
            "value": float(best.best_val_miou or 0.0),
            "trial_id": best.trial_id,
            "epochs": best.epochs,
            "search": params.tune.name,
            "lambda_seg": params.loss.lambda_seg,
        }
    )
    if check is not None:
        doc["seed_check"] = check.as_dict()
    header = (
        f"# Best λ of the search {params.tune.name!r} (`spd tune`). λp and λd are relative to λs:\n"
        "# with loss.from_tuning: true, train uses λp = lambda_seg * lambda_pose (likewise λd),\n"
        "# and lr when the search sampled it.\n"
    )
    if check is not None:
        header += (
            f"# seed_check: the best λ and λ = 1 re-trained on seeds {check.seeds} (tuning/seed_check.py):\n"
            f"# {check.verdict} — {check.reason}.\n"
        )
    atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False))


def plot_lambda_miou(
    path: Path,
    outcomes: list[TrialOutcome],
    best: TrialOutcome | None,
    bounds: tuple[tuple[float, float], tuple[float, float]] | None = None,
) -> None:
    """Best val mIoU of every trial over (λp/λs, λd/λs), log axes spanning the search space
    (`bounds`: the λp and λd intervals); failed trials as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    scored = [o for o in outcomes if o.best_val_miou is not None]
    if scored:
        sc = ax.scatter(
            [o.lambda_pose for o in scored],
            [o.lambda_densepose for o in scored],
            c=[o.best_val_miou for o in scored],
            s=[80 if o.status != "stopped_early" else 40 for o in scored],
            cmap="viridis",
            edgecolors="k",
        )
        fig.colorbar(sc, ax=ax, label="best val mIoU")
    failed = [o for o in outcomes if o.status == STATUS_FAILED or o.best_val_miou is None]
    if failed:
        ax.scatter(
            [o.lambda_pose for o in failed],
            [o.lambda_densepose for o in failed],
            marker="x",
            c="red",
            label="failed",
        )
        ax.legend(loc="best")
    if best is not None:
        ax.annotate(
            f"best {best.best_val_miou:.3f}",
            (best.lambda_pose, best.lambda_densepose),
            textcoords="offset points",
            xytext=(6, 6),
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    if bounds is not None:
        for (low, high), set_lim in zip(bounds, (ax.set_xlim, ax.set_ylim)):
            if low < high:
                set_lim(low / 1.2, high * 1.2)
    ax.set_xlabel("λp / λs")
    ax.set_ylabel("λd / λs")
    ax.set_title("val mIoU over λp × λd (small: stopped early)")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
