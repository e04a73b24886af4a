"""`spd ablation report`: every cell's metrics aggregated over seeds -> reports/ablation.{md,json,png}.

Mean ± sample std per task set and metric, the difference to {seg} with its standard deviation and
a 2σ verdict, findings generated from those numbers, a bar plot, and one MLflow parent run with a
nested run per cell. The cells themselves are trained by `spd ablation run` (pipeline/ablation.py).
"""

from __future__ import annotations

import io
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.ablation import METRICS, braced, cell_dir, cell_name
from pipeline.config import Params
from pipeline.runtime import METRICS_DIR, numeric_only
from spd.errors import SpdError

BASELINE = "seg"
SIGNIFICANCE_SIGMAS = 2.0


# ---------------------------------------------------------------------------------------------
# Aggregation over seeds (pure: numbers in, numbers out)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    values: tuple[float, ...]
    mean: float
    std: float | None  # sample standard deviation; None with a single seed

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(tuple(values), statistics.fmean(values), std)


@dataclass(frozen=True)
class Comparison:
    delta: float  # mean(task set) - mean({seg})
    sigma: float | None  # std of that difference of means: sqrt(s1²/n1 + s0²/n0)
    significant: bool | None  # |delta| > 2 sigma; None when a std is undefined (one seed)


def compare(x: Summary, base: Summary) -> Comparison:
    delta = x.mean - base.mean
    if x.std is None or base.std is None:
        return Comparison(delta, None, None)
    sigma = math.sqrt(x.std**2 / len(x.values) + base.std**2 / len(base.values))
    return Comparison(delta, sigma, abs(delta) > SIGNIFICANCE_SIGMAS * sigma)


def aggregate(cells: list[dict], task_sets: tuple[str, ...]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task set: {metric: {mean, std, n, values, delta, sigma_delta, significant}}} over seeds."""
    summaries: dict[str, dict[str, Summary]] = {}
    for ts in task_sets:
        rows = [c for c in cells if c["task_set"] == ts]
        summaries[ts] = {}
        for key, _ in METRICS:
            vals = [float(c[key]) for c in rows if c.get(key) is not None]
            if vals:
                summaries[ts][key] = Summary.of(vals)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    base = summaries.get(BASELINE, {})
    for ts, per_metric in summaries.items():
        out[ts] = {}
        for key, s in per_metric.items():
            entry: dict[str, Any] = {
                "mean": s.mean,
                "std": s.std,
                "n": len(s.values),
                "values": list(s.values),
            }
            if ts != BASELINE and key in base:
                c = compare(s, base[key])
                entry.update(delta=c.delta, sigma_delta=c.sigma, significant=c.significant)
            out[ts][key] = entry
    return out


def findings(agg: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Plain sentences of what the numbers show, generated from them (never typed by hand)."""
    lines: list[str] = []
    compared = [(ts, key, e) for ts, m in agg.items() for key, e in m.items() if "delta" in e]
    if not compared:
        return ["Nothing to compare: the {seg} baseline or the other task sets are missing."]
    undetermined = [x for x in compared if x[2]["significant"] is None]
    significant = [x for x in compared if x[2]["significant"]]
    label = dict(METRICS)
    for ts, key, e in significant:
        word = "better" if e["delta"] > 0 else "worse"
        lines.append(
            f"{braced(ts)} is significantly {word} than {{seg}} on {label[key]}: "
            f"Δ = {e['delta']:+.4f}, more than {SIGNIFICANCE_SIGMAS:g}σ = "
            f"{SIGNIFICANCE_SIGMAS * e['sigma_delta']:.4f}."
        )
    if undetermined:
        lines.append(
            "Significance cannot be judged with a single seed per task set (no standard deviation); "
            "add seeds to ablation.seeds."
        )
    elif significant:
        lines.append(
            f"All other differences to {{seg}} are within {SIGNIFICANCE_SIGMAS:g}σ: not significant."
        )
    else:
        lines.append(
            f"No significant difference: no task set differs from {{seg}} by more than "
            f"{SIGNIFICANCE_SIGMAS:g}σ on any metric, so these runs neither confirm nor refute the paper's "
            "claim that pose and DensePose help segmentation."
        )
    fewest = min(e["n"] for _, _, e in compared)
    if 1 < fewest < 3:
        lines.append(
            f"Only {fewest} seeds per task set: the standard deviations are rough, so read every "
            f"{SIGNIFICANCE_SIGMAS:g}σ verdict as indicative; add seeds to ablation.seeds to firm it up."
        )
    best = max(agg, key=lambda ts: agg[ts]["miou"]["mean"] if "miou" in agg[ts] else -1.0)
    lines.append(f"Highest mean in-domain mIoU: {braced(best)} ({agg[best]['miou']['mean']:.4f}).")
    if any("cross_miou" in m for m in agg.values()):
        best_x = max(agg, key=lambda ts: agg[ts]["cross_miou"]["mean"] if "cross_miou" in agg[ts] else -1.0)
        lines.append(
            f"Highest mean cross-domain mIoU: {braced(best_x)} ({agg[best_x]['cross_miou']['mean']:.4f})."
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Report: markdown, JSON, plot, MLflow
# ---------------------------------------------------------------------------------------------


def _fmt(e: dict[str, Any] | None) -> str:
    if e is None:
        return "—"
    return f"{e['mean']:.4f}" + (f" ± {e['std']:.4f}" if e["std"] is not None else "")


def _fmt_delta(e: dict[str, Any] | None) -> str:
    if e is None or "delta" not in e:
        return "—"
    if e["significant"] is None:
        return f"{e['delta']:+.4f} (σ n/a)"
    return f"{e['delta']:+.4f} ({'yes' if e['significant'] else 'no'}, 2σ = {2 * e['sigma_delta']:.4f})"


def render_markdown(params: Params, agg: dict, cells: list[dict], notes: list[str]) -> str:
    a = params.ablation
    cols = [label for _, label in METRICS]
    lines = [
        "# Task ablation",
        "",
        f"Task sets {', '.join(braced(ts) for ts in a.task_sets)}; "
        f"seeds {list(a.seeds)}; {a.epochs} epoch(s) each; backbone {params.model.backbone}, "
        f"output stride {params.model.output_stride}; otherwise the settings of `train`. "
        "In-domain: the main dataset's val split; cross-domain: the second dataset's val split scored "
        "on the shared coarse groups (spd.labels.COARSE_GROUPS). Each entry is mean ± sample std over seeds.",
        "",
        "## Findings",
        "",
        *[f"- {n}" for n in notes],
        "",
        "## Results (mean ± std over seeds)",
        "",
        "| task set | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for ts in a.task_sets:
        row = agg.get(ts, {})
        lines.append(f"| {braced(ts)} | " + " | ".join(_fmt(row.get(k)) for k, _ in METRICS) + " |")
    lines += [
        "",
        "## Difference to {seg}",
        "",
        f"Δ = mean − mean({{seg}}); significant when |Δ| > {SIGNIFICANCE_SIGMAS:g}σ, where σ = "
        "sqrt(s²/n + s_seg²/n_seg) is the standard deviation of the difference of the two means.",
        "",
        "| task set | " + " | ".join(cols[:-1]) + " |",
        "|---|" + "---|" * (len(cols) - 1),
    ]
    for ts in a.task_sets:
        if ts == BASELINE:
            continue
        row = agg.get(ts, {})
        lines.append(
            f"| {braced(ts)} | " + " | ".join(_fmt_delta(row.get(k)) for k, _ in METRICS[:-1]) + " |"
        )
    lines += [
        "",
        "## Cells",
        "",
        "| cell | " + " | ".join(cols) + " | seconds |",
        "|---|" + "---|" * (len(cols) + 1),
    ]
    for c in cells:
        vals = " | ".join("—" if c.get(k) is None else f"{c[k]:.4f}" for k, _ in METRICS)
        lines.append(f"| {cell_name(c['task_set'], c['seed'])} | {vals} | {c.get('total_seconds', 0):.0f} |")
    plot = os.path.relpath(Path(a.plot), Path(a.report).parent)
    lines += ["", f"![task ablation: mean ± std over seeds]({plot})", ""]
    return "\n".join(lines)


def render_plot(agg: dict, task_sets: tuple[str, ...]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    width = 0.8 / max(len(task_sets), 1)
    for i, ts in enumerate(task_sets):
        row = agg.get(ts, {})
        xs = [j + (i - (len(task_sets) - 1) / 2) * width for j, (k, _) in enumerate(METRICS) if k in row]
        means = [row[k]["mean"] for k, _ in METRICS if k in row]
        errs = [row[k]["std"] or 0.0 for k, _ in METRICS if k in row]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=braced(ts))
    ax.set_xticks(range(len(METRICS)), [label for _, label in METRICS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over seeds (error bar: std)")
    ax.set_title("Task ablation")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(task_sets))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def read_cells(params: Params, root: Path) -> list[dict]:
    """Every cell's metrics.json named by ablation.task_sets x seeds; a missing one is an error."""
    import json

    cells, missing = [], []
    for ts in params.ablation.task_sets:
        for seed in params.ablation.seeds:
            path = cell_dir(params, root, ts, seed) / "metrics.json"
            try:
                cells.append(json.loads(path.read_text()))
            except FileNotFoundError:
                missing.append(str(path.relative_to(root)))
            except (OSError, ValueError) as e:
                raise SpdError(f"{path}: unreadable ablation cell metrics ({e})") from None
    if missing:
        raise SpdError(
            f"{len(missing)} ablation cell(s) not run yet: {', '.join(missing)} "
            "(run `dvc repro ablation/dvc.yaml` or `spd ablation run --tasks X --seed N`)"
        )
    return cells


def _metric_key(name: str) -> str:
    return name.replace("+", "_")  # MLflow metric names allow [A-Za-z0-9_-./ ], not '+'


def log_to_mlflow(params: Params, root: Path, agg: dict, cells: list[dict], files: list[Path]) -> str:
    """One parent run (aggregates + report files) with a nested run per cell; returns the parent's id."""
    import mlflow

    from pipeline.runtime import check_tracking_reachable, get_or_create_experiment, tracking_uri

    uri = tracking_uri(params.mlflow, root)
    check_tracking_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, params.mlflow.experiment, uri)
    a = params.ablation
    with mlflow.start_run(
        experiment_id=exp_id, run_name="ablation", tags={"spd.ablation": "parent"}
    ) as parent:
        mlflow.log_params(
            {"task_sets": ",".join(a.task_sets), "seeds": ",".join(map(str, a.seeds)), "epochs": a.epochs}
        )
        for ts, per_metric in agg.items():
            for key, e in per_metric.items():
                mlflow.log_metric(f"{_metric_key(ts)}.{key}_mean", e["mean"])
                if e["std"] is not None:
                    mlflow.log_metric(f"{_metric_key(ts)}.{key}_std", e["std"])
                if e.get("delta") is not None:
                    mlflow.log_metric(f"{_metric_key(ts)}.{key}_delta", e["delta"])
        for f in files:
            mlflow.log_artifact(str(f))
        for c in cells:
            name = cell_name(c["task_set"], c["seed"])
            tags = {"spd.ablation": "cell"}
            if c.get("train_run_id"):
                tags["spd.train_run_id"] = c["train_run_id"]
            with mlflow.start_run(experiment_id=exp_id, run_name=f"ablation-{name}", nested=True, tags=tags):
                mlflow.log_params({"task_set": c["task_set"], "seed": c["seed"], "epochs": a.epochs})
                mlflow.log_metrics({k: float(c[k]) for k, _ in METRICS if c.get(k) is not None})
        return parent.info.run_id


def write_report(params: Params, root: Path, log_mlflow: bool = True) -> dict:
    """Aggregate all cells into reports/ablation.{md,json,png} (atomically) and MLflow."""
    from spd.io import atomic_write_bytes, atomic_write_json, atomic_write_text

    cells = read_cells(params, root)
    a = params.ablation
    agg = aggregate(cells, a.task_sets)
    notes = findings(agg)
    md_path = root / a.report
    json_path, png_path = root / a.metrics, root / a.plot
    doc = {
        "task_sets": {ts: agg.get(ts, {}) for ts in a.task_sets},
        "cells": {cell_name(c["task_set"], c["seed"]): c for c in cells},
        "findings": notes,
        "settings": {"seeds": list(a.seeds), "epochs": a.epochs, "significance_sigmas": SIGNIFICANCE_SIGMAS},
    }
    atomic_write_bytes(png_path, render_plot(agg, a.task_sets))
    atomic_write_json(json_path, doc)
    means = {ts: {k: e["mean"] for k, e in agg.get(ts, {}).items()} for ts in a.task_sets}
    atomic_write_json(root / METRICS_DIR / "ablation.json", numeric_only(means))
    atomic_write_text(md_path, render_markdown(params, agg, cells, notes))
    if log_mlflow:
        doc["mlflow_parent_run_id"] = log_to_mlflow(params, root, agg, cells, [md_path, json_path, png_path])
    for n in notes:
        print(n)
    print(f"wrote {a.report}, {a.metrics}, {a.plot}")
    return doc
