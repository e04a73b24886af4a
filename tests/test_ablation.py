"""The task ablation as users run it: `dvc repro ablation/dvc.yaml` trains and evaluates every
task set x seed through Ray Train, then writes a report whose every number comes from the cells.

A tiny matrix (2 task sets x 2 seeds, 1 epoch, 64 px, head_channels 16) runs through real DVC in a
temporary git repo holding a copy of the project, on the session's local Ray and a sqlite MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.ablation import METRICS, braced, cell_name
from pipeline.ablation_report import JUDGED, with_class_groups
from spd.labels import LIP_CLASSES

TASK_SETS = ["seg", "seg+pose"]
SEEDS = [0, 1]


def _tiny_params(root_params: Path, tracking_uri: str) -> dict:
    raw = yaml.safe_load(root_params.read_text())
    # The session's tiny datasets (tests/fixtures/data.py), described by the params that make them:
    # the fixture records them as the root pipeline's synthesize + prepare outputs.
    raw["synth"].update(seed=7, image_size=64, train=24, val=8)
    raw["synth"]["cross"].update(seed=1007, count=40)
    raw["prepare"]["image_size"] = 64
    raw["prepare"]["main"]["out"] = "data/prepared/main"
    raw["prepare"]["cross"].update(out="data/prepared/cross", val_fraction=0.5, split_seed=0)
    raw["model"].update(backbone="resnet18", head_channels=16)
    raw["train"].update(
        batch_size=8, ray_workers=1, cpus_per_worker=1.0, storage_path="ray_results", keep_checkpoints=1
    )
    raw["evaluate"].update(batch_size=8, overlays=0)
    raw["mlflow"].update(tracking_uri=tracking_uri, experiment="spd-ablation-test")
    # 1 epoch of 16 of the 24 images, on the cells' own copy of the data (at the same 64 px)
    raw["ablation"].update(task_sets=TASK_SETS, seeds=SEEDS, epochs=1, epoch_images=16, image_size=64)
    return raw


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (
        f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    )
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def ablation_project(
    tmp_path_factory: pytest.TempPathFactory,
    project_root: Path,
    synth_lip_raw: Path,
    synth_atr_raw: Path,
    prepared_tiny: Path,
    prepared_cross_tiny: Path,
    ray_local: str,
) -> tuple[Path, dict, str]:
    """A git + DVC copy of the project with tiny params and data, after `dvc repro
    ablation/dvc.yaml`; yields (project, env, repro output)."""
    proj = tmp_path_factory.mktemp("ablation_project")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("spd", "pipeline", "ablation"):
        shutil.copytree(project_root / d, proj / d, ignore=ignore)
    shutil.copy(project_root / "dvc.yaml", proj / "dvc.yaml")
    shutil.copy(project_root / ".gitignore", proj / ".gitignore")
    for src, dst in (
        (synth_lip_raw, "data/raw/synth_lip"),
        (synth_atr_raw, "data/raw/synth_atr"),
        (prepared_tiny, "data/prepared/main"),
        (prepared_cross_tiny, "data/prepared/cross"),
    ):
        shutil.copytree(src, proj / dst)
    uri = f"sqlite:///{proj / 'mlflow.db'}"
    (proj / "params.yaml").write_text(yaml.safe_dump(_tiny_params(project_root / "params.yaml", uri)))

    env = dict(os.environ, RAY_ADDRESS=ray_local, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=uri)
    env.pop("DVC_NO_ANALYTICS", None)
    _run(["git", "init", "-q"], proj, env)
    _run(["dvc", "init", "-q"], proj, env)
    _run(["dvc", "config", "core.analytics", "false"], proj, env)
    # The ablation's cells depend on the root pipeline's data: record the copies as what its
    # synthesize and prepare stages made, so the repro below runs the ablation, not the data again.
    _run(["dvc", "commit", "-f", "-q", "synthesize", "prepare"], proj, env)
    _run(["git", "add", "-A"], proj, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny project"], proj, env)
    out = _run(["dvc", "repro", "ablation/dvc.yaml"], proj, env, timeout=1500)
    assert "Running stage 'synthesize'" not in out and "Running stage 'prepare'" not in out, out
    return proj, env, out


@pytest.mark.slow
def test_dvc_repro_runs_every_cell_and_reports_mean_and_std_from_their_metrics(ablation_project) -> None:
    proj, env, out = ablation_project
    cells = {}
    for ts in TASK_SETS:
        for seed in SEEDS:
            name = cell_name(ts, seed)
            assert f"ablation@{ts}-{seed}" in out  # a DVC matrix stage per cell ran
            assert (proj / "ablation/runs" / name / "model.pt").is_file()
            m = json.loads((proj / "ablation/runs" / name / "metrics.json").read_text())
            assert m["task_set"] == ts and m["seed"] == seed and m["epochs"] == 1
            assert [epoch for epoch, _ in m["val_miou_history"]] == [1]  # what convergence is judged on
            assert list(m["per_class_iou"]) == list(LIP_CLASSES)  # grouped by the report
            cells[name] = m = with_class_groups(m)
            for key in ("miou", "pixel_acc", "mean_acc", "cross_miou"):
                assert 0.0 <= m[key] <= 1.0, (name, key, m[key])
            assert m["cross_label_set"] == "atr"  # scored on the shifted ATR-layout domain
            assert (m["pckh"] is not None) == ("pose" in ts.split("+"))
            assert m["train_run_id"]  # trained through run_training, tracked in MLflow

    report = json.loads((proj / "reports/ablation.json").read_text())
    md = (proj / "reports/ablation.md").read_text()
    assert (proj / "reports/ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["cells"]) == set(cells)
    for ts in TASK_SETS:
        row_cells = []
        for key, _ in METRICS:
            values = [cells[cell_name(ts, s)][key] for s in SEEDS]
            if values[0] is None:
                assert key not in report["task_sets"][ts]
                row_cells.append("—")
                continue
            mean, std = statistics.fmean(values), statistics.stdev(values)
            entry = report["task_sets"][ts][key]
            assert entry["mean"] == pytest.approx(mean) and entry["std"] == pytest.approx(std)
            assert entry["n"] == len(SEEDS)
            row_cells.append(f"{mean:.4f} ± {std:.4f}")
        assert f"| {braced(ts)} | " + " | ".join(row_cells) + " |" in md
    assert report["findings"] and all(f in md for f in report["findings"])

    # Nothing left to do: every cell and the report are up to date in DVC.
    status = _run(["dvc", "status", "ablation/dvc.yaml"], proj, env)
    assert "up to date" in status, status
    # A bare `dvc repro` reproduces the root dvc.yaml's stages only: the ablation is not among them.
    root_stages = _run(["dvc", "stage", "list", "--name-only"], proj, env).split()
    assert "train" in root_stages and not any("ablation" in s or s == "report" for s in root_stages)
    ablation_stages = _run(["dvc", "stage", "list", "--name-only", "ablation/dvc.yaml"], proj, env).split()
    assert len(ablation_stages) == len(TASK_SETS) * len(SEEDS) + 2  # + data, report
    # The cells trained on their own copy of the raw data, packed by the pipeline's data stage.
    assert "Running stage 'ablation/dvc.yaml:data'" in out
    assert (proj / "data/prepared/ablation/main/train").is_dir()


@pytest.mark.slow
def test_one_epoch_cells_make_every_verdict_inconclusive_because_none_has_converged(ablation_project) -> None:
    proj, _, _ = ablation_project
    report = json.loads((proj / "reports/ablation.json").read_text())
    md = (proj / "reports/ablation.md").read_text()
    cells = {name: with_class_groups(c) for name, c in report["cells"].items()}
    assert [(c["task_set"], c["metric"]) for c in report["comparisons"]] == [("seg+pose", k) for k in JUDGED]
    for c in report["comparisons"]:
        pairs = [
            cells[cell_name("seg+pose", s)][c["metric"]] - cells[cell_name("seg", s)][c["metric"]]
            for s in SEEDS
        ]
        assert c["paired"] and c["delta"] == pytest.approx(statistics.fmean(pairs))
        assert c["ci"][0] < c["delta"] < c["ci"][1] and c["mde"] > 0
        assert c["verdict"] == "inconclusive"
        assert c["reason"].startswith(
            "4 of 4 cells not converged (1 validated epoch(s), the convergence rule needs the last 3: "
            "seg-s0, seg-s1, seg+pose-s0, seg+pose-s1)"
        )
    assert not any(s["converged"] for s in report["cell_status"].values())
    assert "→ **inconclusive**: 4 of 4 cells not converged" in md
    assert "Verdicts: 0 effect, 0 no effect larger than MDE, 4 inconclusive." in md
    assert "MDE = (t[1 − α/2, df] + t[0.8, df])·SE" in md  # the formula is stated
    assert "significant" not in md.lower() and "σ" not in md  # no over-claiming wording


@pytest.mark.slow
def test_the_report_is_one_mlflow_parent_run_with_a_nested_run_per_cell(ablation_project) -> None:
    import mlflow

    proj, _, _ = ablation_project
    client = mlflow.MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("spd-ablation-test")
    parents = client.search_runs([exp.experiment_id], "tags.`spd.ablation` = 'parent'")
    assert len(parents) == 1
    parent = parents[0]
    nested = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(nested) == len(TASK_SETS) * len(SEEDS)
    report = json.loads((proj / "reports/ablation.json").read_text())
    for run in nested:
        name = cell_name(run.data.params["task_set"], int(run.data.params["seed"]))
        cell = report["cells"][name]
        assert run.data.metrics["miou"] == pytest.approx(cell["miou"])
        assert run.data.metrics["cross_miou"] == pytest.approx(cell["cross_miou"])
        assert run.data.tags["spd.train_run_id"] == cell["train_run_id"]
    assert parent.data.metrics["seg_pose.miou_mean"] == pytest.approx(
        report["task_sets"]["seg+pose"]["miou"]["mean"]
    )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"ablation.md", "ablation.json", "ablation.png"} <= artifacts
    # The cells' training runs are in MLflow too, tagged with their cell.
    with sqlite3.connect(proj / "mlflow.db") as db:
        cells = {r[0] for r in db.execute("select value from tags where key = 'spd.ablation_cell'")}
    assert cells == {cell_name(ts, s) for ts in TASK_SETS for s in SEEDS}


def test_a_model_of_atr_layout_data_is_scored_on_lip_layout_data_via_coarse_groups(
    tmp_path: Path, project_root: Path, prepared_tiny: Path, prepared_cross_tiny: Path
) -> None:
    """The reverse direction of the cross-dataset evaluation: label sets come from the manifests.

    Scoring needs a model of the right label set, not a trained one: the cells' training is the
    fixture's story above, and an untrained network keeps this test free of a Ray run.
    """
    from pipeline.ablation import cell_metrics_from_evaluation
    from pipeline.config import params_from_dict
    from pipeline.evaluate import evaluate_model
    from spd.data.packed import PackedSplit
    from spd.model import build_model, save_model_file

    raw = _tiny_params(project_root / "params.yaml", f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw["prepare"]["main"].update(source="atr", out=str(prepared_cross_tiny))
    raw["prepare"]["cross"].update(source="synthetic", out=str(prepared_tiny))
    params = params_from_dict(raw)
    atr = PackedSplit(prepared_cross_tiny / "train")
    model_file = tmp_path / "model.pt"
    model = build_model(params.model, atr.num_classes)
    save_model_file(model_file, model, params.model, atr.num_classes, atr.label_set, atr.image_size)

    evaluation = evaluate_model(params, model_file, project_root=tmp_path)
    assert evaluation["label_set"] == "atr" and evaluation["metrics"]["cross"]["label_set"] == "lip"
    metrics = cell_metrics_from_evaluation(evaluation["metrics"], params.model.tasks)
    assert 0.0 <= metrics["cross_miou"] <= 1.0 and 0.0 <= metrics["miou"] <= 1.0
