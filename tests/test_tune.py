"""`spd tune`: the λ search (Ray Tune + ASHA + Optuna, one TorchTrainer per trial, MLflow nested runs).

The end-to-end test runs the real CLI against the session's local Ray on tiny synthetic data; the
others check what a user relies on without a search: bad search spaces are refused before Ray
starts, and the train stage takes its λ from best_params.yaml only when asked to.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import apply_overrides, apply_tuning_results, params_from_dict, read_params_file
from spd.config import ConfigError
from tuning import seed_check

ROOT = Path(__file__).resolve().parent.parent


def _project(tmp_path: Path, prepared: Path | None, *overrides: str) -> Path:
    """A tmp project: the repo's params.yaml shrunk to a tiny search; returns its params file."""
    base = [
        "prepare.image_size=64",
        "prepare.cross=null",
        "model.backbone=resnet18",
        "model.head_channels=16",
        "train.batch_size=8",
        "train.max_failures=0",
        "tune.epoch_images=null",  # an epoch is a pass over the tiny split
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "mlflow.experiment=spd-tune-test",
    ]
    if prepared is not None:  # the search trains on the ablation's copy of the data: <data_out>/main
        base += [f"ablation.data_out={prepared.parent}", "ablation.image_size=64"]
    raw = apply_overrides(read_params_file(ROOT / "params.yaml"), base + list(overrides))
    params_from_dict(raw)  # the tmp project starts valid
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _spd_tune(params_file: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "tune", "--params", str(params_file), *args],
        cwd=params_file.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _spd_tune_background(params_file: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "tune", "--params", str(params_file)],
        cwd=params_file.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_a_finished_trial(tmp_path: Path, proc: subprocess.Popen, timeout_s: float = 900) -> str:
    """The trial id of the first nested MLflow run that has a final status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        # The search state is written after the driver has set up MLflow: only then read the db.
        if (tmp_path / "tuning" / "ray_results" / "tiny-search" / "spd_search.json").exists():
            runs, _ = _mlflow_runs(tmp_path)
            for run in runs:
                if "spd.tune.status" in run.data.tags:
                    return run.data.tags["spd.tune.trial_id"]
        time.sleep(3)
    proc.kill()
    raise AssertionError("no trial finished in time")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("tune.lambda_pose=[-0.5, 2.0]", "tune.lambda_pose"),
        ("tune.lambda_densepose=[5.0, 0.5]", "tune.lambda_densepose"),
        ("tune.lr=[0.01, 0.001]", "tune.lr"),
        ("tune.num_trials=0", "tune.num_trials"),
        ("tune.grace_period=99", "tune.grace_period"),
    ],
)
def test_invalid_search_space_fails_before_ray_naming_the_key(tmp_path: Path, override: str, key: str):
    params_file = _project(tmp_path, None)
    # An address nothing listens on: had `spd tune` got as far as Ray, it would fail differently (1).
    res = _spd_tune(params_file, "--set", override, env={"RAY_ADDRESS": "127.0.0.1:9"}, timeout=120)
    assert res.returncode == 2, res.stderr
    assert key in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "tuning").exists()


def test_train_takes_lambda_from_tuning_file_only_when_switched_on(tmp_path: Path):
    raw = read_params_file(ROOT / "params.yaml")
    best = tmp_path / "best.yaml"
    best.write_text("lambda_pose: 0.25\nlambda_densepose: 4.0\nlr: 0.0005\nmetric: val_miou\nvalue: 0.5\n")
    overrides = ["loss.lambda_seg=2.0", f"loss.tuning_file={best}"]

    off = params_from_dict(apply_overrides(raw, overrides))
    assert apply_tuning_results(off, tmp_path) == off

    on = apply_tuning_results(
        params_from_dict(apply_overrides(raw, [*overrides, "loss.from_tuning=true"])), tmp_path
    )
    assert on.loss.lambda_pose == pytest.approx(0.5)  # relative to λs = 2
    assert on.loss.lambda_densepose == pytest.approx(8.0)
    assert on.train.lr == pytest.approx(0.0005)

    best.write_text("lambda_pose: -1\nlambda_densepose: 4.0\n")
    with pytest.raises(ConfigError, match="lambda_pose"):
        apply_tuning_results(
            params_from_dict(apply_overrides(raw, [*overrides, "loss.from_tuning=true"])), tmp_path
        )
    missing = [f"loss.tuning_file={tmp_path / 'nope.yaml'}", "loss.from_tuning=true"]
    with pytest.raises(ConfigError, match="loss.tuning_file"):
        apply_tuning_results(params_from_dict(apply_overrides(raw, missing)), tmp_path)


def _mlflow_runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=1000), client


@pytest.mark.slow
def test_search_stops_bad_trials_checks_the_best_on_fresh_seeds_logs_each_once_and_feeds_train(
    ray_local: str, prepared_tiny: Path, tmp_path: Path
):
    # 4 trials, 2 at a time (2 CPUs / 1 worker x 1 CPU each). ASHA (grace 1, reduction factor 2,
    # 3 epochs) checks every trial at epochs 1 and 2 against the median of those that got there
    # before it; the first to reach a rung always goes on, so at least one trial completes. With lr
    # sampled over four decades (1e-6 learns nothing in an epoch, 0.03 overshoots) and 12 steps an
    # epoch, the val mIoU of the 4 trials differ widely, and a trial below the median stops early.
    params_file = _project(
        tmp_path,
        prepared_tiny,
        "train.batch_size=2",
        # the plain head: this story's early stop depends on how far apart the 4 tiny trials land,
        # which was set up (seed, lr range) for it; the facing head moves them (all 4 completed)
        "model.facing_head=false",
        "tune.name=tiny-search",
        "tune.num_trials=4",
        "tune.epochs=3",
        "tune.grace_period=1",
        "tune.reduction_factor=2",
        "tune.workers_per_trial=1",
        "tune.cpus_per_worker=1",
        "tune.lr=[0.000001, 0.03]",
        "tune.seed=0",
        "tune.max_failures=1",
        "tune.check_seeds=[1, 2]",
    )
    # Interrupt the search (Ctrl-C) once its first trial has ended, then run it again: it continues.
    proc = _spd_tune_background(params_file)
    first = _wait_for_a_finished_trial(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout[-3000:] + stderr[-5000:]
    assert not (tmp_path / "tuning" / "best_params.yaml").exists()  # no outputs from half a search
    runs, _ = _mlflow_runs(tmp_path)
    assert [r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags] == ["KILLED"]

    res = _spd_tune(params_file)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "continuing search tiny-search" in res.stdout
    out = tmp_path / "tuning"

    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    statuses = [r["status"] for r in rows]
    assert set(statuses) <= {"completed", "stopped_early"}, rows
    assert "stopped_early" in statuses and "completed" in statuses, [
        (r["status"], r["lr"], r["best_val_miou"]) for r in rows
    ]
    for r in rows:
        epochs = int(r["epochs"])
        assert (epochs == 3) == (r["status"] == "completed")
        assert 1 <= epochs <= 3

    best = yaml.safe_load((out / "best_params.yaml").read_text())
    best_row = max(rows, key=lambda r: float(r["best_val_miou"]))
    assert best["trial_id"] == best_row["trial_id"]
    assert best["value"] == pytest.approx(float(best_row["best_val_miou"]), abs=1e-6)
    assert best["lambda_pose"] == pytest.approx(float(best_row["lambda_pose"]), rel=1e-5)
    assert (out / "lambda_miou.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The seed check: the best λ and λ = 1 re-trained on seeds 1 and 2, compared seed by seed.
    check = best["seed_check"]
    assert check["seeds"] == [1, 2]
    assert set(check["best"]) == set(check["baseline"]) == {1, 2}
    gains = [check["best"][s] - check["baseline"][s] for s in (1, 2)]
    assert check["delta"] == pytest.approx(sum(gains) / 2)
    assert check["ci"][0] <= check["delta"] <= check["ci"][1]
    assert check["verdict"] in (seed_check.GAIN, seed_check.LOSS, seed_check.NOISE)
    assert f"spd tune: seed check: {check['verdict']}: " in res.stdout

    # best_params.yaml loads into the train config through the loss.from_tuning switch.
    raw = read_params_file(params_file)
    train_params = apply_tuning_results(
        params_from_dict(apply_overrides(raw, ["loss.from_tuning=true", "loss.lambda_seg=1.0"])), tmp_path
    )
    assert train_params.loss.lambda_pose == pytest.approx(best["lambda_pose"])
    assert train_params.loss.lambda_densepose == pytest.approx(best["lambda_densepose"])
    assert train_params.train.lr == pytest.approx(best["lr"])

    # MLflow: exactly one parent run and one nested run per trial, nothing else.
    runs, client = _mlflow_runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.data.tags for r in runs]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(nested) == 8 and len(runs) == 9  # 4 trials and 4 seed-check runs
    checks = [r for r in nested if "spd.tune.check" in r.data.tags]
    assert sorted((r.data.tags["spd.tune.check"], r.data.params["seed"]) for r in checks) == [
        ("baseline", "1"),
        ("baseline", "2"),
        ("best", "1"),
        ("best", "2"),
    ]
    for run in checks:
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_miou")
        assert max(m.value for m in history) == pytest.approx(
            check[run.data.tags["spd.tune.check"]][int(run.data.params["seed"])], abs=1e-6
        )
    nested = [r for r in nested if "spd.tune.check" not in r.data.tags]
    by_trial = {r.data.tags["spd.tune.trial_id"]: r for r in nested}
    assert set(by_trial) == {r["trial_id"] for r in rows}
    assert first in by_trial  # the trial that ended before the interruption was kept, not re-run
    for row in rows:
        run = by_trial[row["trial_id"]]
        assert float(run.data.params["lambda_pose_rel"]) == pytest.approx(float(row["lambda_pose"]), rel=1e-5)
        assert float(run.data.params["lambda_densepose_rel"]) == pytest.approx(
            float(row["lambda_densepose"]), rel=1e-5
        )
        assert run.data.tags["spd.tune.status"] == row["status"]
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_miou")
        assert {m.step for m in history} == set(range(1, int(row["epochs"]) + 1))
    assert parents[0].info.status == "FINISHED"

    # Re-running the same search continues it: nothing is trained again, nothing logged twice.
    before = (out / "best_params.yaml").read_text()
    res = _spd_tune(params_file)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "continuing search tiny-search" in res.stdout
    assert (out / "best_params.yaml").read_text() == before
    runs, _ = _mlflow_runs(tmp_path)
    assert len(runs) == 9


def test_concurrent_trials_follow_the_resources_each_trial_needs():
    from spd.config import replace
    from tuning.search import max_concurrent_trials

    defaults = params_from_dict(read_params_file(ROOT / "params.yaml")).tune
    assert defaults.max_concurrent is None

    def TuneConfig(**changes):  # noqa: N802 - reads like the constructor it stands for
        return replace(defaults, **changes)

    one_cpu = TuneConfig(workers_per_trial=1, cpus_per_worker=1.0)
    assert max_concurrent_trials(one_cpu, {"CPU": 2.0}, use_gpu=False) == 2
    two_by_two = TuneConfig(workers_per_trial=2, cpus_per_worker=2.0)
    assert max_concurrent_trials(two_by_two, {"CPU": 16.0}, use_gpu=False) == 4
    # GPUs are the limit when trials train on them: 8 GPUs, 4 GPU workers per trial.
    gpu = TuneConfig(workers_per_trial=4, cpus_per_worker=1.0)
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 8.0}, use_gpu=True) == 2
    # Never 0: a trial bigger than the cluster runs alone (its trainer waits for an autoscaler).
    assert max_concurrent_trials(TuneConfig(cpus_per_worker=4.0), {"CPU": 2.0}, False) == 1
    assert max_concurrent_trials(TuneConfig(max_concurrent=3), {"CPU": 2.0}, False) == 3


def test_a_trial_trains_on_the_ablation_data_at_its_size_with_the_tune_budget():
    from tuning.search import search_params, trial_params

    raw = read_params_file(ROOT / "params.yaml")
    params = params_from_dict(
        apply_overrides(raw, ["ablation.image_size=96", "ablation.data_out=exp", "tune.epoch_images=400"])
    )
    trial = trial_params(search_params(params), {"lambda_pose": 0.5, "lambda_densepose": 2.0})
    assert trial.prepare.main.out == "exp/main" and trial.prepare.image_size == 96
    assert (trial.train.epochs, trial.train.epoch_images) == (params.tune.epochs, 400)
    assert trial.loss.lambda_pose == pytest.approx(0.5 * params.loss.lambda_seg)


def test_a_search_without_its_data_fails_before_ray_naming_the_key_and_the_command(tmp_path: Path):
    params_file = _project(tmp_path, None, "ablation.data_out=nowhere")
    res = _spd_tune(params_file, env={"RAY_ADDRESS": "127.0.0.1:9"}, timeout=120)
    assert res.returncode == 1, res.stderr
    made_by = "(ablation.data_out; run `spd ablation data` first)"
    assert f"nowhere/main/train: no prepared data {made_by}" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "tuning").exists()


def test_a_new_search_result_changes_what_dvc_hashes_for_train_only_when_from_tuning_is_on(tmp_path: Path):
    from pipeline.cli import main

    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "reports/loss_weights.json" in dvc_yaml["stages"]["train"]["deps"]
    assert dvc_yaml["stages"]["loss_weights"]["always_changed"] is True
    best = tmp_path / "tuning" / "best_params.yaml"
    best.parent.mkdir()
    raw = read_params_file(ROOT / "params.yaml")
    out = tmp_path / "reports" / "loss_weights.json"

    def resolved(from_tuning: bool) -> bytes:
        params_file = tmp_path / "params.yaml"
        on = apply_overrides(raw, [f"loss.from_tuning={str(from_tuning).lower()}"])
        params_file.write_text(yaml.safe_dump(on))
        assert main(["loss-weights", "--params", str(params_file), "--out", str(out)]) == 0
        return out.read_bytes()

    best.write_text("lambda_pose: 0.5\nlambda_densepose: 2.0\n")
    off, on = resolved(False), resolved(True)
    best.write_text("lambda_pose: 0.25\nlambda_densepose: 2.0\n")  # a new search's result
    assert resolved(False) == off  # train stays up to date while the search's values are unused
    assert resolved(True) != on  # ...and re-runs once they are
