"""`spd train`: distributed training on a real local Ray, tracked in a real (sqlite) MLflow store.

The Ray runs are few and combined (each fit() pays Ray's fixed start-up cost): one 2-worker gloo run
that loses a worker mid-epoch, fails clearly, is re-run, resumes, learns and must match a
single-process evaluation. Ray's own retries (max_failures > 0) continuing a run are the cluster
tests' story (tests/test_cluster.py), on a node that is lost and comes back. The rest needs no Ray.
"""

from __future__ import annotations

import csv
import json
import socket
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import runtime
from pipeline.config import MlflowConfig
from pipeline.train import run_training
from pipeline.train_state import FAULT_MARKER, history_csv, run_fingerprint
from spd.config import replace
from spd.errors import SpdError
from spd.precision import autocast_dtype

PER_EPOCH_KEYS = (
    "train_loss",
    "train_loss_seg",
    "train_loss_pose",
    "train_loss_densepose",
    "lr",
    "images_per_s",
    "val_miou",
    "val_pixel_acc",
    "val_mean_acc",
    "val_pckh",
    "val_dp_miou",
    "val_dp_uv_error",
)


def _mlflow(params):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=params.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    return client, client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_two_workers_lose_one_fail_clearly_then_resume_in_the_same_mlflow_run_and_learn(
    ray_local, tiny_train_params, prepared_tiny, tmp_path
):
    from torch.utils.data import DataLoader

    from spd.data.dataset import SPDDataset
    from spd.engine import evaluate
    from spd.model import load_model_file

    # No retries: the fault hook kills a worker mid-way through epoch 2, which ends the run after
    # its epoch-1 checkpoint, with one clear error and no half-written output.
    params = tiny_train_params("train.epochs=4", "train.fault_at_epoch=2", "train.max_failures=0")
    with pytest.raises(SpdError, match="failed.*re-running resumes"):
        run_training(params, project_root=tmp_path)
    client, runs = _mlflow(params)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    first_id = runs[0].info.run_id
    for output in (params.train.model_out, params.train.report, params.train.history):
        assert not (tmp_path / output).exists(), output

    # The same command again (same params -> same run name) resumes at epoch 2, in the same MLflow run.
    result = run_training(params, project_root=tmp_path)
    assert (Path(result.storage_path) / result.run_name / FAULT_MARKER).is_file()
    assert result.mlflow_run_id == first_id
    history = result.history
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]

    # It learns.
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_miou"] > history[0]["val_miou"]

    # Outputs: model file (weights_only-loadable), report, one CSV row per epoch.
    payload = torch.load(result.model_path, weights_only=True)
    assert payload["format"] == "spd-model/1" and payload["image_size"] == 64
    report = json.loads((tmp_path / params.train.report).read_text())
    assert report["epochs"] == 4 and report["run_name"] == result.run_name
    numbers = json.loads((tmp_path / runtime.metrics_path(params.train.report)).read_text())
    assert numbers == {
        k: v for k, v in report.items() if k not in ("run_name", "storage_path", "mlflow_run_id")
    }
    assert report["final"]["val_miou"] == pytest.approx(history[-1]["val_miou"])
    assert report["best"]["val_miou"] == max(r["val_miou"] for r in history)
    rows = list(csv.DictReader((tmp_path / params.train.history).open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]

    # The 2 workers each scored their own shard of the val split and summed their counts; their
    # metrics are those of one process scoring the saved model. The sum itself is exact (test_metrics
    # pins the all-reduce); the two forward passes are not: different thread counts round
    # differently and a near-tie pixel may flip its argmax, so the scores agree to a few pixels.
    model, info = load_model_file(result.model_path)
    single = evaluate(
        model,
        DataLoader(SPDDataset(prepared_tiny / "val"), batch_size=3),
        "cpu",
        num_classes=info["num_classes"],
        tasks=params.model.tasks,
        autocast_dtype=autocast_dtype(params.train.bf16, "cpu"),
        channels_last=True,
    )
    final = result.final_metrics
    for ours, theirs in [("val_miou", "miou"), ("val_pixel_acc", "pixel_acc"), ("val_mean_acc", "mean_acc")]:
        assert final[ours] == pytest.approx(single[theirs], abs=0.01), ours
    assert final["val_pckh"] == pytest.approx(single["pckh"], abs=0.02)

    # Exactly one MLflow run (rank 0 logs, not every worker), each metric once per epoch: epoch 1,
    # logged by the first attempt, was not trained again.
    client, runs = _mlflow(params)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == result.mlflow_run_id and run.info.status == "FINISHED"
    for key in PER_EPOCH_KEYS:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == [1, 2, 3, 4], key
    assert run.data.params["train.epochs"] == "4"
    assert run.data.params["model.head_channels"] == "16"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "train_history.csv" in artifacts
    assert client.list_artifacts(run.info.run_id, "overlays")


def test_an_unreachable_tracking_server_fails_before_training(tiny_train_params, tmp_path, capsys):
    from pipeline.cli import main

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    params = tiny_train_params(f"mlflow.tracking_uri={uri}")

    start = time.monotonic()
    with pytest.raises(SpdError, match=rf"MLflow tracking server {uri} is unreachable"):
        run_training(params, project_root=tmp_path)
    assert time.monotonic() - start < 15
    assert not (tmp_path / "ray_results").exists()

    # Through the CLI: one line naming the server, exit code 1, no traceback.
    params_file = tmp_path / "params.yaml"
    from spd.config import params_to_dict

    params_file.write_text(yaml.safe_dump(params_to_dict(params)))
    assert main(["train", "--params", str(params_file)]) == 1
    err = capsys.readouterr().err
    assert f"MLflow tracking server {uri} is unreachable" in err and "Traceback" not in err


def test_same_configuration_resumes_and_changed_weights_config_starts_afresh(
    tiny_train_params, prepared_tiny
):
    params = tiny_train_params()
    fp = run_fingerprint(params, prepared_tiny)
    # Knobs that do not change the trained weights keep the run (and its checkpoints).
    for change in (
        {"ray_workers": 1},
        {"fault_at_epoch": 2},
        {"storage_path": "/elsewhere"},
        {"max_failures": 3},
    ):
        assert run_fingerprint(replace(params, train=replace(params.train, **change)), prepared_tiny) == fp
    # Anything that changes the weights starts a new run.
    assert run_fingerprint(replace(params, train=replace(params.train, lr=0.01)), prepared_tiny) != fp
    assert run_fingerprint(replace(params, train=replace(params.train, epochs=9)), prepared_tiny) != fp
    assert run_fingerprint(replace(params, loss=replace(params.loss, lambda_pose=2.0)), prepared_tiny) != fp


def test_tracking_uri_param_then_env_then_sqlite_next_to_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = MlflowConfig(tracking_uri=None, experiment="spd")
    assert runtime.tracking_uri(default, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert runtime.artifact_location(f"sqlite:///{tmp_path}/mlflow.db") == (tmp_path / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert runtime.tracking_uri(default, tmp_path) == "http://127.0.0.1:5000"
    assert runtime.tracking_uri(replace(default, tracking_uri="sqlite:///x.db"), tmp_path) == "sqlite:///x.db"


def test_data_hash_comes_from_the_dvc_lock(tmp_path):
    assert runtime.data_hash(tmp_path, "data/prepared/main") is None  # no lock yet
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "prepare": {
                        "cmd": "spd prepare",
                        "outs": [
                            {"path": "data/prepared/main", "hash": "md5", "md5": "abc123.dir"},
                            {"path": "data/prepared/cross", "hash": "md5", "md5": "def456.dir"},
                        ],
                    }
                },
            }
        )
    )
    assert runtime.data_hash(tmp_path, "data/prepared/main") == "abc123.dir"
    assert runtime.data_hash(tmp_path, "./data/prepared/cross") == "def456.dir"


def test_history_csv_has_one_row_per_epoch_and_only_columns_that_exist():
    rows = [
        {"epoch": 1, "train_loss": 2.0, "train_loss_seg": 2.0, "lr": 1e-3, "images_per_s": 5.0},
        {
            "epoch": 2,
            "train_loss": 1.0,
            "train_loss_seg": 1.0,
            "lr": 5e-4,
            "images_per_s": 5.0,
            "val_miou": 0.5,
        },
    ]
    parsed = list(csv.DictReader(history_csv(rows).splitlines()))
    assert list(parsed[0]) == ["epoch", "train_loss", "train_loss_seg", "lr", "images_per_s", "val_miou"]
    assert [r["val_miou"] for r in parsed] == ["", "0.5"]


def test_a_local_ray_listens_on_loopback_only(ray_local):
    # Guards pipeline/ray_loopback.py, the one Ray workaround: fails when a Ray upgrade changes it.
    import ray

    assert ray_local.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
