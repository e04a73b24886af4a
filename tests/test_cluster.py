"""Cluster mode, for real on one machine: a two-node Ray cluster on loopback (scripts/cluster.sh), a
real `mlflow server`, and storage every node reaches: a shared directory (checkpoints, the tracking
server's artifacts on its disk), or object storage only — a real S3-API server on loopback holding
checkpoints, the DVC remote and the tracking server's artifacts (tests.fixtures.run_storage.py).
Each storage gets a round (train over both nodes, lose a node, resume; in the bucket also register
and serve); the DVC remote is tested in the bucket, and tests/test_cluster_s3.py holds what only a
bucket has.

Every command these tests run is a line of the README section "Running on a cluster", run through
bash exactly as written; the tests only supply the variables the README leaves to the user
($SHARED, $DVC_REMOTE, $REPO_URL, RAY_ADDRESS, MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL and the
credentials) and a tiny params.yaml in the project directory. `pytest -m cluster` selects them all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline.config import apply_overrides, read_params_file
from tests.fixtures.cluster import ROOT, RayCluster, run_logged
from tests.fixtures.run_storage import MLFLOW_ARTIFACTS_BUCKET, RunStorage

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# The README's commands, verbatim (test_cluster_readme_shows_the_commands_the_tests_run checks it).
UP = "scripts/cluster.sh up"
S3_UP = "scripts/cluster.sh s3-up"
KILL_WORKER = "scripts/cluster.sh kill-worker"
TRAIN = (
    "spd train --set train.ray_workers=2 --set train.cpus_per_worker=1 "
    "--set train.placement_strategy=STRICT_SPREAD --set train.storage_path=$SHARED/ray_results"
)
TUNE = "spd tune --set tune.storage_path=$SHARED/tuning"
EVALUATE = "spd evaluate"
REGISTER = "spd register"
LOAD_AND_PREDICT = (
    "python -c 'import sys, mlflow, numpy as np; "
    'model = mlflow.pyfunc.load_model(f"models:/{sys.argv[1]}@champion"); '
    "print(model.predict(np.zeros((120, 90, 3), np.uint8)).shape)' spd-human-parsing"
)
DVC_REMOTE_ADD = "dvc remote add -d storage $DVC_REMOTE"
DVC_REMOTE_ENDPOINT = "dvc remote modify storage endpointurl $AWS_ENDPOINT_URL"
DVC_COMMIT_CONFIG = 'git add .dvc/config && git commit -m "DVC remote"'
DVC_REPRO = "dvc repro"
DVC_COMMIT_RUN = 'git add dvc.lock reports && git commit -m "Pipeline run"'
DVC_PUSH = "dvc push"
DVC_CLONE_PULL = "git clone $REPO_URL spd-clone && cd spd-clone && dvc pull dvc.yaml"
DVC_STATUS = "dvc status dvc.yaml"
README_COMMANDS = [
    UP,
    S3_UP,
    KILL_WORKER,
    TRAIN,
    TUNE,
    EVALUATE,
    REGISTER,
    LOAD_AND_PREDICT,
    DVC_REMOTE_ADD,
    DVC_REMOTE_ENDPOINT,
    DVC_COMMIT_CONFIG,
    DVC_REPRO,
    DVC_COMMIT_RUN,
    DVC_PUSH,
    DVC_CLONE_PULL,
    DVC_STATUS,
]

# The tiny profile the commands run with (the project's params.yaml, shrunk): 64 px, 16-channel heads.
TINY = [
    "synth.train=16",
    "synth.val=8",
    "synth.image_size=64",
    "synth.cross.count=8",
    "prepare.image_size=64",
    "ablation.image_size=64",  # the λ search's data (the ablation's copy)
    "tune.epoch_images=null",
    "model.head_channels=16",
    "train.epochs=2",
    "train.batch_size=8",
    "train.ray_workers=1",
    "train.cpus_per_worker=1",
    "evaluate.overlays=2",
]
MODEL_NAME = "spd-human-parsing"  # params.yaml's register.model_name, as the README uses it


def readme_cluster_section() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Running on a cluster\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, "README.md has no '## Running on a cluster' section"
    return m.group(1)


def write_params(project: Path, overrides: list[str]) -> None:
    raw = apply_overrides(read_params_file(ROOT / "params.yaml"), TINY + overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def make_project(tmp: Path, prepared: Path, overrides: list[str]) -> Path:
    """A project directory holding only a tiny params.yaml that points at prepared data."""
    project = tmp / "project"
    project.mkdir()
    data = [f"prepare.main.out={prepared}", f"ablation.data_out={prepared.parent}", "prepare.cross=null"]
    write_params(project, [*data, *overrides])
    return project


def cluster_env(cluster: RayCluster, storage: RunStorage) -> dict[str, str]:
    return {**cluster.env, **storage.env}


def without_s3_access(env: dict[str, str]) -> dict[str, str]:
    """A process that knows no object store: no endpoint, no credentials."""
    return {k: v for k, v in env.items() if not k.startswith(("AWS_", "MLFLOW_S3_"))}


def started_worker_pids(output: str) -> list[int]:
    """The train workers' own start lines: '[spd train] worker R/W started: pid N on node ...'."""
    return [int(p) for p in re.findall(r"\[spd train\] worker \d+/\d+ started: pid (\d+)", output)]


def train_through_node_loss(
    project: Path,
    env: dict[str, str],
    log: Path,
    storage: RunStorage,
    run_name: str,
    during_run: Callable[[], None],
) -> tuple[int, str, int | None]:
    """Start `spd train` in the background, call `during_run` once its first checkpoint is registered
    (kill the worker node, ...), wait for the training to end -> (exit code, output, the latest
    checkpoint's epoch right after `during_run`)."""
    with log.open("w+") as out:
        train = subprocess.Popen(
            ["bash", "-c", TRAIN],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as a whole if the test fails
        )
        try:
            deadline = time.monotonic() + 400
            while storage.latest_checkpoint_epoch(run_name) is None:
                assert train.poll() is None, "training ended before its first checkpoint"
                assert time.monotonic() < deadline, "no checkpoint within 400 s"
                time.sleep(0.2)
            during_run()
            done = storage.latest_checkpoint_epoch(run_name)
            rc = train.wait(timeout=400)
        finally:
            if train.poll() is None:
                os.killpg(train.pid, signal.SIGKILL)
        out.seek(0)
        return rc, out.read(), done


def test_cluster_readme_shows_the_commands_the_tests_run() -> None:
    section = readme_cluster_section()
    missing = [c for c in README_COMMANDS if c not in section]
    assert not missing, f"README 'Running on a cluster' lacks the tested commands: {missing}"


def assert_one_worker_per_node(cluster: RayCluster, output: str) -> None:
    """Placement as Ray itself recorded it: of the latest worker group's two workers, the head node's
    raylet started one and the (current) worker node's raylet the other."""
    pids = started_worker_pids(output)[-2:]
    assert len(pids) == 2, f"expected a worker group of 2 in the output:\n{output[-3000:]}"
    on_head, on_worker = cluster.train_worker_pids("head"), cluster.train_worker_pids("worker")
    assert len(set(pids) & on_head) == 1 and len(set(pids) & on_worker) == 1, (
        f"workers {pids} not one per node (head node ran {on_head}, worker node ran {on_worker})"
    )


def assert_trained_to_the_end(project: Path, storage: RunStorage, epochs: int) -> None:
    """The run's report, its last checkpoint in the storage ($SHARED: a directory or a bucket), and
    its MLflow run on the tracking server (nothing in a local sqlite file or results directory)."""
    from mlflow.tracking import MlflowClient

    report = json.loads((project / "reports" / "train.json").read_text())
    assert report["epochs"] == epochs and report["storage_path"] == f"{storage.root}/ray_results"
    assert storage.latest_checkpoint_epoch(report["run_name"].rsplit("-", 1)[0]) == epochs
    last = storage.files(f"ray_results/{report['run_name']}/epoch_{epochs:04d}/")
    assert f"ray_results/{report['run_name']}/epoch_{epochs:04d}/state.pt" in last, last
    assert not (project / "mlflow.db").exists(), "the run logged to a local sqlite file, not the server"
    assert not (project / "ray_results").exists()
    client = MlflowClient(tracking_uri=storage.tracking_uri)
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.placement_strategy"] == "STRICT_SPREAD"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "val_miou")) == epochs


def register_and_load_by_alias(project: Path, env: dict[str, str], storage: RunStorage, log: Path) -> None:
    """`spd evaluate` and `spd register` through the tracking server; then a consumer in a fresh
    process, knowing only the server and the model's name — no S3 endpoint or credentials (the
    server proxies the artifacts) — loads the champion and predicts."""
    from mlflow.tracking import MlflowClient

    run_logged(EVALUATE, cwd=project, env=env, log=log, timeout=300)
    run_logged(REGISTER, cwd=project, env=env, log=log, timeout=300)
    registry = json.loads((project / "reports" / "registry.json").read_text())
    client = MlflowClient(tracking_uri=storage.tracking_uri)
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == str(registry["version"])
    if storage.server is not None:  # the server stored the model's files in the bucket
        stored = storage.server.keys(f"s3://{MLFLOW_ARTIFACTS_BUCKET}")
        assert any(k.endswith("/MLmodel") for k in stored), stored[:20]
    consumer = run_logged(
        LOAD_AND_PREDICT, cwd=project.parent, env=without_s3_access(env), log=log, timeout=300
    )
    assert consumer.stdout.strip().splitlines()[-1] == "(120, 90)", consumer.stdout


# One story per storage (train over both nodes, lose a node, resume from the storage; on object
# storage also register and serve, the README's full recipe), so that both storages are covered
# without running every story twice: the cluster part of the test command has a budget of a few
# minutes on 2 cores. Registering over HTTP and loading by alias from a directory-backed server is
# tests/test_register.py's end-to-end test.


def test_cluster_shared_dir_node_loss_fails_clearly_and_the_same_command_resumes(
    ray_cluster: RayCluster, cluster_mlflow_server: str, prepared_tiny: Path, tmp_path: Path
) -> None:
    # max_failures=0: with no spare node a lost node is an error, not an endless wait for capacity.
    project = make_project(
        tmp_path,
        prepared_tiny,
        [
            "train.epochs=4",
            "train.max_failures=0",
            "train.run_name=node-loss",
            "mlflow.experiment=spd-cluster",
        ],
    )
    storage = RunStorage("shared", str(tmp_path / "shared"), cluster_mlflow_server)
    env = cluster_env(ray_cluster, storage)
    log = tmp_path / "commands.log"

    rc, first_output, _ = train_through_node_loss(
        project,
        env,
        tmp_path / "first_attempt.log",
        storage,
        "node-loss",
        lambda: ray_cluster.script(KILL_WORKER.split(" ", 1)[1]),
    )

    assert rc != 0, f"training survived the loss of a node it needed:\n{first_output[-3000:]}"
    message = [ln for ln in first_output.splitlines() if ln.startswith("spd train: error:")]
    assert message and "re-running resumes from the latest" in message[-1], first_output[-3000:]
    assert "Traceback" not in first_output.split("spd train: error:")[-1]
    assert "TrainingReport(" not in first_output  # one progress line per epoch, not Ray's reports
    run_dir = next(Path(storage.root).glob("ray_results/node-loss-*"))
    done = storage.latest_checkpoint_epoch("node-loss")
    assert done is not None and done < 4, "the node was killed after training had finished"

    ray_cluster.script(UP.split(" ", 1)[1])  # the worker node is back
    second = run_logged(TRAIN, cwd=project, env=env, log=log, timeout=600)
    output = second.stdout + second.stderr
    epochs = [int(e) for e in re.findall(r"\[spd train\] epoch (\d+)/4", output)]
    assert epochs and epochs[0] == done + 1 and epochs[-1] == 4, (
        f"resumed at {epochs}, last checkpoint {done}"
    )
    assert_one_worker_per_node(ray_cluster, output)
    assert_trained_to_the_end(project, storage, 4)
    report = json.loads((project / "reports" / "train.json").read_text())
    assert Path(report["storage_path"]) / report["run_name"] == run_dir


def test_cluster_object_store_node_loss_with_retries_continues_from_the_bucket_and_the_model_serves(
    ray_cluster: RayCluster, s3_run_storage: RunStorage, prepared_tiny: Path, tmp_path: Path
) -> None:
    # max_failures=1 (the default): the run waits for room for its worker group, then continues from
    # the latest checkpoint in the bucket on the returned node.
    storage, run_name = s3_run_storage, "node-back"
    project = make_project(
        tmp_path,
        prepared_tiny,
        [
            "train.epochs=4",
            "train.max_failures=1",
            f"train.run_name={run_name}",
            "mlflow.experiment=spd-cluster",
        ],
    )
    env = cluster_env(ray_cluster, storage)

    def lose_a_node_and_bring_it_back() -> None:
        ray_cluster.script(KILL_WORKER.split(" ", 1)[1])
        ray_cluster.script(UP.split(" ", 1)[1])  # the lost machine is back

    rc, output, done = train_through_node_loss(
        project, env, tmp_path / "train.log", storage, run_name, lose_a_node_and_bring_it_back
    )

    assert rc == 0, f"training did not continue on the returned node:\n{output[-3000:]}"
    groups = output.split("[spd train] worker 0/2 started")
    assert len(groups) == 3, f"expected a first and a replacement worker group:\n{output[-3000:]}"
    after = [int(e) for e in re.findall(r"\[spd train\] epoch (\d+)/4", groups[2])]
    assert done is not None and after and after[0] == done + 1 and after[-1] == 4, (
        f"continued at {after}, last checkpoint {done}"
    )
    assert "TrainingReport(" not in output
    assert_one_worker_per_node(ray_cluster, output)
    assert_trained_to_the_end(project, storage, 4)

    register_and_load_by_alias(project, env, storage, tmp_path / "commands.log")


def test_cluster_dvc_remote_in_the_bucket_restores_data_and_model_in_a_fresh_clone(
    ray_cluster: RayCluster, s3_run_storage: RunStorage, tmp_path: Path
) -> None:
    # A git repository holding the project as it is (tracked and new files), with the tiny profile.
    storage = s3_run_storage
    repo = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    # No shared disk at all: checkpoints go to the bucket too.
    write_params(
        repo,
        [
            "mlflow.experiment=spd-cluster-dvc",
            "register.model_name=spd-cluster-dvc",
            f"train.storage_path={storage.root}/ray_results",
        ],
    )
    git_env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@localhost",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@localhost",
    }
    remote = f"{storage.root}/dvc"  # $DVC_REMOTE: a prefix of the test's bucket
    env = {**cluster_env(ray_cluster, storage), **git_env, "DVC_REMOTE": remote, "REPO_URL": str(repo)}
    log = tmp_path / "commands.log"
    run_logged("git init -q && git add -A && git commit -qm project", cwd=repo, env=env, log=log, timeout=60)

    run_logged(DVC_REMOTE_ADD, cwd=repo, env=env, log=log, timeout=60)
    run_logged(DVC_REMOTE_ENDPOINT, cwd=repo, env=env, log=log, timeout=60)
    run_logged(DVC_COMMIT_CONFIG, cwd=repo, env=env, log=log, timeout=60)
    run_logged(DVC_REPRO, cwd=repo, env=env, log=log, timeout=900)
    run_logged(DVC_COMMIT_RUN, cwd=repo, env=env, log=log, timeout=60)
    run_logged(DVC_PUSH, cwd=repo, env=env, log=log, timeout=300)
    assert storage.files("dvc/"), "dvc push put nothing in the remote"
    assert "AWS_SECRET" not in (repo / ".dvc" / "config").read_text()  # credentials stay in the env

    run_logged(DVC_CLONE_PULL, cwd=tmp_path, env=env, log=log, timeout=300)
    clone = tmp_path / "spd-clone"
    for out in ("data/prepared/main/train/images.npy", "data/raw/synth_lip", "models/spd.pt"):
        assert (clone / out).exists(), f"dvc pull did not restore {out}"
    assert (clone / "models/spd.pt").read_bytes() == (repo / "models/spd.pt").read_bytes()

    # loss_weights is always_changed by design (a second: it reads the tuning file, which may not
    # exist); every other stage is up to date, and re-running it leaves them so.
    status = run_logged(DVC_STATUS, cwd=clone, env=env, log=log, timeout=120)
    assert status.stdout.strip() == "loss_weights:\n\talways changed", status.stdout
    repro = run_logged(DVC_REPRO, cwd=clone, env=env, log=log, timeout=300)
    recomputed = set(re.findall(r"Running stage '([^']+)'", repro.stdout)) - {"loss_weights"}
    assert not recomputed, f"dvc repro recomputed {recomputed} after a pull:\n{repro.stdout}"
    assert not (clone / "ray_results").exists() and not (clone / "mlflow.db").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
