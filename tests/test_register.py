"""`spd register` against a real `mlflow server`: the champion gate, its report, concurrent runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main as spd_main


def make_project(root: Path, project_root: Path, model_file: Path, miou: float) -> Path:
    """A project directory with the repo's params, a metrics file saying `miou`, and the model."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(project_root / "params.yaml", root / "params.yaml")
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports" / "metrics.json").write_text(json.dumps({"miou": miou, "pixel_acc": 0.9}))
    (root / "models").mkdir(exist_ok=True)
    shutil.copy(model_file, root / "models" / "spd.pt")
    return root


def register_args(root: Path, name: str) -> list[str]:
    return ["register", "--params", str(root / "params.yaml"), "--set", f"register.model_name={name}"]


def test_register_over_http_gates_the_champion_alias(
    mlflow_server: str, tiny_model_file: Path, project_root: Path, tmp_path: Path, monkeypatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    name = "spd-gate-test"
    reports = []
    for i, miou in enumerate([0.40, 0.30, 0.50]):
        root = make_project(tmp_path / f"p{i}", project_root, tiny_model_file, miou)
        assert spd_main(register_args(root, name)) == 0
        reports.append(json.loads((root / "reports" / "registry.json").read_text()))

    first, worse, better = reports
    assert first["decision"] == "champion" and first["champion_before"] is None
    # A worse model does not take champion; the report carries both figures.
    assert worse["decision"] == "challenger"
    assert worse["val_miou"] == 0.30
    assert worse["champion_before"] == {"version": first["version"], "val_miou": 0.40}
    assert worse["champion_after"]["version"] == first["version"]
    assert better["decision"] == "champion"
    assert better["champion_before"] == {"version": first["version"], "val_miou": 0.40}

    client = mlflow.MlflowClient(mlflow_server)
    assert str(client.get_model_version_by_alias(name, "champion").version) == better["version"]
    assert str(client.get_model_version_by_alias(name, "challenger").version) == worse["version"]
    assert not client.search_registered_models(f"name = '{name}.register-lock'")

    # Each version carries its model card: provenance tags and a description, read back here.
    version = client.get_model_version(name, better["version"])
    tags = version.tags
    assert tags["training_data.source"] == "synthetic"
    assert tags["training_data.root"] == "data/raw/synth_lip"
    assert (tags["label_set"], tags["num_classes"], tags["image_size"]) == ("lip", "20", "32")
    assert (tags["backbone"], tags["tasks"]) == ("resnet18", "seg,pose,densepose")
    assert tags["val_miou"] == "0.5" and tags["val_dataset"] == "synthetic val split (data/prepared/main/val)"
    assert len(tags["params_hash"]) == 16 and tags["git_commit"]
    assert "not meaningful" in tags["intended_use"]
    assert "trained on synthetic data" in version.description.lower()
    assert "Val mIoU 0.5000" in version.description

    # A consumer loads the champion over HTTP and gets a mask.
    import numpy as np

    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.predict(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)


def test_register_without_metrics_names_the_missing_file(
    tiny_model_file: Path, project_root: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    root = make_project(tmp_path / "p", project_root, tiny_model_file, 0.5)
    (root / "reports" / "metrics.json").unlink()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert spd_main(register_args(root, "spd-no-metrics")) == 1
    assert "metrics.json: metrics not found" in capsys.readouterr().err
    assert not (root / "reports" / "registry.json").exists()


@pytest.mark.slow
def test_two_registers_at_once_leave_the_better_model_champion(
    mlflow_server: str, tiny_model_file: Path, project_root: Path, tmp_path: Path
) -> None:
    import mlflow

    name = "spd-race-test"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "OMP_NUM_THREADS": "1"}
    procs = []
    for i, miou in enumerate([0.70, 0.60]):
        root = make_project(tmp_path / f"p{i}", project_root, tiny_model_file, miou)
        cmd = [sys.executable, "-m", "pipeline.cli", *register_args(root, name)]
        procs.append(
            subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()[-3000:]
        assert "Warning" not in out.decode(), out.decode()[-3000:]  # e.g. MLflow's pickling warnings

    reports = [json.loads((tmp_path / f"p{i}" / "reports" / "registry.json").read_text()) for i in range(2)]
    by_miou = {r["val_miou"]: r for r in reports}
    client = mlflow.MlflowClient(mlflow_server)
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == by_miou[0.70]["version"]
    # The two decisions are those of some serial order of the two runs.
    better, worse = by_miou[0.70], by_miou[0.60]
    if worse["decision"] == "champion":  # it went first
        assert worse["champion_before"] is None
        assert better["champion_before"] == {"version": worse["version"], "val_miou": 0.60}
    else:
        assert worse["champion_before"] == {"version": better["version"], "val_miou": 0.70}
        assert str(client.get_model_version_by_alias(name, "challenger").version) == worse["version"]
    assert better["decision"] == "champion"
    assert not client.search_registered_models(f"name = '{name}.register-lock'")


@pytest.mark.slow
def test_training_then_register_over_http_yields_a_champion_linked_to_its_training_run(
    mlflow_server: str, ray_local: str, prepared_tiny: Path, project_root: Path, tmp_path: Path
) -> None:
    """`spd train`, `spd evaluate`, `spd register` as a user runs them, tracked by a real server."""
    import mlflow
    import numpy as np

    shutil.copy(project_root / "params.yaml", tmp_path / "params.yaml")
    name = "spd-e2e-test"
    overrides = [
        f"prepare.main.out={prepared_tiny}", "prepare.image_size=64", "prepare.cross=null",
        "model.head_channels=16", "train.epochs=1", "train.batch_size=8", "train.ray_workers=1",
        "train.cpus_per_worker=1", f"train.storage_path={tmp_path / 'ray_results'}",
        "mlflow.experiment=spd-e2e", f"register.model_name={name}", "evaluate.overlays=2",
    ]  # fmt: skip
    sets = [a for o in overrides for a in ("--set", o)]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "RAY_ADDRESS": ray_local,
        "OMP_NUM_THREADS": "2",
    }
    for stage in ("train", "evaluate", "register"):
        cmd = [sys.executable, "-m", "pipeline.cli", stage, "--params", str(tmp_path / "params.yaml"), *sets]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"spd {stage}:\n{proc.stderr[-4000:]}"

    train_report = json.loads((tmp_path / "reports" / "train.json").read_text())
    registry = json.loads((tmp_path / "reports" / "registry.json").read_text())
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert registry["decision"] == "champion" and registry["val_miou"] == metrics["miou"]
    assert registry["run_id"] == train_report["mlflow_run_id"]

    client = mlflow.MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias(name, "champion")
    assert version.run_id == train_report["mlflow_run_id"]
    run = client.get_run(version.run_id)
    assert run.data.metrics["eval_miou"] == pytest.approx(metrics["miou"])
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.predict(np.zeros((50, 40, 3), np.uint8)).shape == (50, 40)


def test_a_lock_left_by_a_crashed_register_is_broken_and_a_live_one_is_waited_for(tmp_path: Path) -> None:
    import json as _json
    import threading
    import time

    import mlflow

    from pipeline.register import LOCK_SUFFIX, STALE_LOCK_S, registry_lock

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    lock = "m" + LOCK_SUFFIX
    client.create_registered_model(lock, description=_json.dumps({"since": time.time() - STALE_LOCK_S - 1}))
    with registry_lock(client, "m"):
        assert client.get_registered_model(lock).description != ""
    assert not client.search_registered_models(f"name = '{lock}'")

    order = []
    with registry_lock(client, "m"):
        waiter = threading.Thread(
            target=lambda: (registry_lock(client, "m").__enter__(), order.append("second"))
        )
        waiter.start()
        time.sleep(1.0)
        order.append("first")
    waiter.join(timeout=30)
    assert order == ["first", "second"]
