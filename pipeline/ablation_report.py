"""`spd ablation report`: every cell's metrics aggregated over seeds -> reports/ablation.{md,json,png}.

Mean ± sample std per task set and metric; for each task set against {seg} on the judged metrics,
the difference, its confidence interval, the minimum detectable effect and a verdict with its
generated reason (pipeline/ablation_stats.py), every cell flagged that had not converged or lies
below the usefulness floor; a bar plot, and one MLflow parent run with a nested run per cell.
The cells themselves are trained by `spd ablation run` (pipeline/ablation.py).
"""

from __future__ import annotations

import dataclasses
import io
import os
import statistics
from pathlib import Path
from typing import Any

from pipeline import ablation_stats as stats
from pipeline.ablation import METRICS, braced, cell_dir, cell_name
from pipeline.config import Params
from pipeline.runtime import METRICS_DIR, numeric_only
from spd.errors import SpdError

BASELINE = "seg"
# Judged against {seg}: in-domain mIoU, its class groups (structural supervision should help most
# where left and right get confused) and the cross-dataset column.
JUDGED = ("miou", "miou_lr", "miou_rest", "cross_miou")


def with_class_groups(cell: dict) -> dict:
    """The cell plus miou_lr / miou_rest from its per-class IoU (None for a cell that lacks it)."""
    per_class = cell.get("per_class_iou") or {}
    return cell | stats.class_group_mious(list(per_class.values()), list(per_class))


# ---------------------------------------------------------------------------------------------
# Aggregation over seeds (pure: numbers in, numbers out)
# ---------------------------------------------------------------------------------------------


def aggregate(cells: list[dict], task_sets: tuple[str, ...]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task set: {metric: {mean, std, n, values}}} over seeds (std None with one seed)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for ts in task_sets:
        rows = [c for c in cells if c["task_set"] == ts]
        out[ts] = {}
        for key, _ in METRICS:
            vals = [float(c[key]) for c in rows if c.get(key) is not None]
            if vals:
                std = statistics.stdev(vals) if len(vals) > 1 else None
                out[ts][key] = {"mean": statistics.fmean(vals), "std": std, "n": len(vals), "values": vals}
    return out


def judge_cells(
    cells: list[dict], task_sets: tuple[str, ...], th: stats.Thresholds
) -> tuple[dict[str, stats.CellStatus], list[dict]]:
    """Every cell's status, and every task set's comparison with {seg} on the JUDGED metrics."""
    named = [(cell_name(c["task_set"], c["seed"]), c) for c in cells]
    status = {name: stats.cell_status(c.get("val_miou_history"), c.get("miou"), th) for name, c in named}

    def per_seed(ts: str, key: str) -> dict[int, float]:
        return {c["seed"]: float(c[key]) for c in cells if c["task_set"] == ts and c.get(key) is not None}

    comparisons = []
    for ts in task_sets:
        if ts == BASELINE:
            continue
        arms = {name: status[name] for name, c in named if c["task_set"] in (ts, BASELINE)}
        for key in JUDGED:
            values, base = per_seed(ts, key), per_seed(BASELINE, key)
            if values and base:
                comparisons.append({"task_set": ts, "metric": key} | stats.compare(values, base, arms, th))
    return status, comparisons


def findings(comparisons: list[dict], status: dict[str, stats.CellStatus], th: stats.Thresholds) -> list[str]:
    """Plain sentences of what the numbers show, generated from them (never typed by hand)."""
    if not comparisons:
        return ["Nothing to compare: the {seg} baseline or the other task sets are missing."]
    label = dict(METRICS)
    lines = [
        stats.describe(c, f"{braced(c['task_set'])} vs {{seg}}, {label[c['metric']]}", th)
        for c in comparisons
    ]
    counts = {v: sum(c["verdict"] == v for c in comparisons) for v in (stats.EFFECT, stats.NO_EFFECT)}
    counts[stats.INCONCLUSIVE] = len(comparisons) - sum(counts.values())
    lines.append("Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".")
    flagged = [name for name, s in status.items() if s.problems]
    if flagged:
        lines.append(f"{len(flagged)} of {len(status)} cells flagged (see Cells): {', '.join(flagged)}.")
    return lines


# ---------------------------------------------------------------------------------------------
# Report: markdown, JSON, plot, MLflow
# ---------------------------------------------------------------------------------------------


def _fmt(e: dict[str, Any] | None) -> str:
    if e is None:
        return "—"
    return f"{e['mean']:.4f}" + (f" ± {e['std']:.4f}" if e["std"] is not None else "")


def _difference_table(comparisons: list[dict], th: stats.Thresholds) -> list[str]:
    label = dict(METRICS)
    lines = [
        f"| task set | metric | Δ | {th.confidence:.0%} CI | MDE | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        ci = "—" if c["ci"] is None else f"[{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]"
        mde = "—" if c["mde"] is None else f"{c['mde']:.4f}"
        lines.append(
            f"| {braced(c['task_set'])} | {label[c['metric']]} | {c['delta']:+.4f} | {ci} | {mde} "
            f"| {c['verdict']} |"
        )
    return lines


def _cells_table(cells: list[dict], status: dict[str, stats.CellStatus]) -> list[str]:
    lines = [
        "| cell | " + " | ".join(label for _, label in METRICS) + " | val mIoU slope | flags | seconds |",
        "|---|" + "---|" * (len(METRICS) + 3),
    ]
    for c in cells:
        name = cell_name(c["task_set"], c["seed"])
        s = status[name]
        vals = " | ".join("—" if c.get(k) is None else f"{c[k]:.4f}" for k, _ in METRICS)
        slope = "—" if s.slope is None else f"{s.slope:+.4f}/epoch"
        flags = "; ".join(s.problems) or "converged, above the floor"
        lines.append(f"| {name} | {vals} | {slope} | {flags} | {c.get('total_seconds', 0):.0f} |")
    return lines


def render_markdown(params: Params, agg: dict, cells: list[dict], notes: list[str], judged: tuple) -> str:
    """judged: judge_cells' (cell statuses, comparisons)."""
    a, th = params.ablation, stats.Thresholds.of(params.ablation)
    status, comparisons = judged
    cols = [label for _, label in METRICS]
    lines = [
        "# Task ablation",
        "",
        f"Task sets {', '.join(braced(ts) for ts in a.task_sets)}; "
        f"seeds {list(a.seeds)}; {a.epochs} epoch(s) each; backbone {params.model.backbone}, "
        f"output stride {params.model.output_stride}; otherwise the settings of `train`. "
        "In-domain: the main dataset's val split; cross-domain: the second dataset's val split scored "
        "on the shared coarse groups (spd.labels.COARSE_GROUPS). Left/right parts: the classes named "
        "left_*/right_*; other classes: the rest, background included.",
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
    plot = os.path.relpath(Path(a.plot), Path(a.report).parent)
    lines += [
        "",
        "## Difference to {seg}",
        "",
        *_difference_table(comparisons, th),
        "",
        stats.method_text(th),
        "",
        "## Cells",
        "",
        *_cells_table(cells, status),
        "",
        f"![task ablation: mean ± std over seeds]({plot})",
        "",
    ]
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


def log_to_mlflow(
    params: Params, root: Path, agg: dict, cells: list[dict], files: list[Path], comparisons: list[dict]
) -> str:
    """One parent run (aggregates, differences to {seg}, report files) with a nested run per cell;
    returns the parent's id."""
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
        for c in comparisons:
            mlflow.log_metric(f"{_metric_key(c['task_set'])}.{c['metric']}_delta", c["delta"])
            if c["mde"] is not None:
                mlflow.log_metric(f"{_metric_key(c['task_set'])}.{c['metric']}_mde", c["mde"])
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

    cells = [with_class_groups(c) for c in read_cells(params, root)]
    a = params.ablation
    agg = aggregate(cells, a.task_sets)
    th = stats.Thresholds.of(a)
    status, comparisons = judged = judge_cells(cells, a.task_sets, th)
    notes = findings(comparisons, status, th)
    md_path = root / a.report
    json_path, png_path = root / a.metrics, root / a.plot
    doc = {
        "task_sets": {ts: agg.get(ts, {}) for ts in a.task_sets},
        "comparisons": comparisons,
        "cells": {cell_name(c["task_set"], c["seed"]): c for c in cells},
        "cell_status": {name: dataclasses.asdict(s) for name, s in status.items()},
        "findings": notes,
        "settings": {
            "seeds": list(a.seeds),
            "epochs": a.epochs,
            **dataclasses.asdict(th),
        },
    }
    atomic_write_bytes(png_path, render_plot(agg, a.task_sets))
    atomic_write_json(json_path, doc)
    means = {ts: {k: e["mean"] for k, e in agg.get(ts, {}).items()} for ts in a.task_sets}
    atomic_write_json(root / METRICS_DIR / "ablation.json", numeric_only(means))
    atomic_write_text(md_path, render_markdown(params, agg, cells, notes, judged))
    if log_mlflow:
        files = [md_path, json_path, png_path]
        doc["mlflow_parent_run_id"] = log_to_mlflow(params, root, agg, cells, files, comparisons)
    for n in notes:
        print(n)
    print(f"wrote {a.report}, {a.metrics}, {a.plot}")
    return doc
