"""Cluster mode on object storage only, the parts a shared directory does not have: Ray Tune's state in
the bucket (an interrupted search resumes from it), and an outage of the object server in the middle
of a checkpoint upload. Same two-node cluster, loopback S3 server and README commands as
tests/test_cluster.py; `pytest -m cluster` selects them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.cluster import RayCluster, run_logged
from tests.fixtures.run_storage import RunStorage
from tests.test_cluster import TRAIN, TUNE, cluster_env, make_project

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

OUTAGE_S = 6  # how long the object server stays stopped ("a few seconds")


def epochs_trained(output: str, total: int) -> list[int]:
    return [int(e) for e in re.findall(rf"\[spd train\] epoch (\d+)/{total}", output)]


def is_complete(storage: RunStorage, checkpoint_dir: str, world: int = 2) -> bool:
    """Whether a checkpoint holds everything pipeline.train writes: the state and each rank's RNG."""
    names = {f.rsplit("/", 1)[-1] for f in storage.files(checkpoint_dir + "/")}
    return {"state.pt", *(f"rng_rank{r}.pt" for r in range(world))} <= names


def run_dir(storage: RunStorage, run_name: str) -> str:
    dirs = {"/".join(f.split("/")[:2]) for f in storage.files(f"ray_results/{run_name}-")}
    assert len(dirs) == 1, dirs
    return dirs.pop()


def test_cluster_object_store_outage_mid_checkpoint_never_resumes_from_a_half_written_one(
    ray_cluster: RayCluster, s3_run_storage: RunStorage, prepared_tiny: Path, tmp_path: Path
) -> None:
    storage, s3_server = s3_run_storage, s3_run_storage.server
    run_name = "outage"
    project = make_project(
        tmp_path,
        prepared_tiny,
        ["train.epochs=3", "train.max_failures=0", f"train.run_name={run_name}", "mlflow.experiment=spd-s3"],
    )
    env = cluster_env(ray_cluster, storage)
    server_log = s3_server.state_dir / "s3.log"
    bucket = storage.root.removeprefix("s3://").split("/")[0]
    upload = re.compile(rf'"(PUT|POST) /{re.escape(bucket)}/spd/ray_results/{run_name}-\w+/epoch_0002/')

    # Stop the server (SIGSTOP: it holds its objects, answers nothing) as soon as it has served the
    # first request of the epoch-2 checkpoint, for a few seconds, then let it go on.
    with (tmp_path / "first_attempt.log").open("w+") as out:
        train = subprocess.Popen(
            ["bash", "-c", TRAIN], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 400
            while not upload.search(server_log.read_text(errors="replace")):
                assert train.poll() is None, "training ended before its second checkpoint"
                assert time.monotonic() < deadline, "no epoch-2 checkpoint upload within 400 s"
                time.sleep(0.05)
            s3_server.pause()
            try:
                time.sleep(OUTAGE_S)
            finally:
                s3_server.resume()
            rc = train.wait(timeout=400)
        finally:
            if train.poll() is None:
                os.killpg(train.pid, signal.SIGKILL)
        out.seek(0)
        first = out.read()
    after_outage = server_log.read_text(errors="replace")
    assert "epoch_0002/state.pt" in after_outage[upload.search(after_outage).end() :] or rc != 0, (
        "the checkpoint upload was already over when the server stopped"
    )

    registered = storage.latest_checkpoint_epoch(run_name)
    if rc == 0:  # the uploads waited for (or retried against) the server and finished
        assert epochs_trained(first, 3) == [1, 2, 3], first[-3000:]
        assert registered == 3
    else:  # one clear line naming the storage, and the checkpoints before the outage stay usable
        errors = [ln for ln in first.splitlines() if ln.startswith("spd train: error:")]
        assert len(errors) == 1 and f"{storage.root}/ray_results/{run_name}-" in errors[0], first[-3000:]
        assert "Traceback" not in first.split("spd train: error:")[-1]
        assert registered is not None and registered < 3
        assert is_complete(storage, f"{run_dir(storage, run_name)}/epoch_{registered:04d}")
        second = run_logged(TRAIN, cwd=project, env=env, log=tmp_path / "commands.log", timeout=600)
        resumed = epochs_trained(second.stdout + second.stderr, 3)
        assert resumed == list(range(registered + 1, 4)), f"resumed at {resumed}, last one {registered}"
    assert storage.latest_checkpoint_epoch(run_name) == 3
    assert is_complete(storage, f"{run_dir(storage, run_name)}/epoch_0003")
    report = json.loads((project / "reports" / "train.json").read_text())
    assert report["epochs"] == 3 and report["storage_path"] == f"{storage.root}/ray_results"


def test_cluster_tune_state_in_the_bucket_resumes_an_interrupted_search(
    ray_cluster: RayCluster, s3_run_storage: RunStorage, prepared_tiny: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    storage = s3_run_storage
    experiment = "spd-s3-tune"
    project = make_project(
        tmp_path,
        prepared_tiny,
        [
            f"mlflow.experiment={experiment}",
            "tune.name=s3-search",
            # 3 trials, 2 at a time: when the first ends the third starts, so the Ctrl-C below
            # always finds a trial running (with 2, both could end within the same second)
            "tune.num_trials=3",
            "tune.epochs=2",
            "tune.grace_period=1",
            "tune.reduction_factor=2",
            "tune.workers_per_trial=1",
            "tune.cpus_per_worker=1",
            "tune.max_failures=1",
            "tune.check_seeds=[]",  # this story is the search's storage; the seed check has its own
        ],
    )
    env = cluster_env(ray_cluster, storage)
    client = MlflowClient(tracking_uri=storage.tracking_uri)

    def finished_trials() -> list[str]:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id], max_results=100) if exp else []
        return [r.data.tags["spd.tune.trial_id"] for r in runs if "spd.tune.status" in r.data.tags]

    # Interrupt the search (Ctrl-C) once its first trial has ended, then run the same command again.
    with (tmp_path / "first_attempt.log").open("w+") as out:
        tune = subprocess.Popen(
            ["bash", "-c", f"exec {TUNE}"], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 500
            while not finished_trials():
                assert tune.poll() is None, "the search ended before it was interrupted"
                assert time.monotonic() < deadline, "no trial finished within 500 s"
                time.sleep(1)
            first = finished_trials()[0]
            tune.send_signal(signal.SIGINT)
            rc = tune.wait(timeout=300)
        finally:
            if tune.poll() is None:
                os.killpg(tune.pid, signal.SIGKILL)
        out.seek(0)
        assert rc == 130, out.read()[-3000:]
    state = storage.files("tuning/s3-search/")
    assert "tuning/s3-search/tuner.pkl" in state, state  # the search's state is in the bucket ...
    assert not (project / "tuning" / "ray_results").exists()  # ... and nowhere on this disk
    assert not (project / "tuning" / "best_params.yaml").exists()

    second = run_logged(TUNE, cwd=project, env=env, log=tmp_path / "commands.log", timeout=900)
    assert "continuing search s3-search" in second.stdout, second.stdout[-3000:]
    with open(project / "tuning" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["status"] for r in rows} <= {"completed", "stopped_early"}, rows
    trials = finished_trials()
    assert sorted(trials) == sorted(r["trial_id"] for r in rows)  # one run per trial, none twice
    assert first in trials  # the trial that ended before the interruption was kept, not re-run
