"""The λ search's parts: search space, trial resources, per-trial params, and the MLflow callback.

A trial samples λp and λd relative to λs (λs stays at `loss.lambda_seg`), and optionally the
learning rate. Each trial is a driver that launches a TorchTrainer with `tune.workers_per_trial`
workers of `tune.cpus_per_worker` CPUs. The driver holds no CPU (only a little logical memory):
were it to hold one, on a 2-CPU machine the trainers of concurrent trials would wait forever for
CPUs their own drivers sit on.

MLflow is written from one process only — the Tune driver, through `MlflowTrialCallback` — so
concurrent trials never contend for the sqlite database and workers never create runs of their own.
Only `spd tune` imports this module, so importing Ray here does not slow the other stages.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from pipeline.ablation import data_params
from pipeline.config import Params, TuneConfig, trial_batch_size
from pipeline.train_state import checkpoint_history
from spd.config import flatten, params_to_dict, replace

# A trial's driver only launches and watches its trainer: it holds a little memory, not a CPU.
DRIVER_RESOURCES = {"CPU": 0.0, "memory": 64 * 2**20}
METRIC = "val_miou"
MODE = "max"

STATUS_COMPLETED = "completed"
STATUS_STOPPED = "stopped_early"
STATUS_FAILED = "failed"
STATUS_UNFINISHED = "unfinished"  # interrupted search: the trial resumes on the next run


def search_space(cfg: TuneConfig, tasks: tuple[str, ...]) -> dict[str, Any]:
    """Ray Tune domains: λp, λd (relative to λs) and optionally lr, all log-uniform.

    The weight of a task the model does not have stays fixed at its interval's low end (it
    multiplies a loss that is always 0, so sampling it would only waste the search).
    """
    from ray import tune

    def loguniform(bounds: tuple[float, float]) -> Any:
        low, high = bounds
        # A degenerate interval is a fixed value (Optuna rejects low == high for log domains).
        return low if low == high else tune.loguniform(low, high)

    space: dict[str, Any] = {
        "lambda_pose": loguniform(cfg.lambda_pose) if "pose" in tasks else cfg.lambda_pose[0],
        "lambda_densepose": (
            loguniform(cfg.lambda_densepose) if "densepose" in tasks else cfg.lambda_densepose[0]
        ),
    }
    if cfg.lr is not None:
        space["lr"] = loguniform(cfg.lr)
    return space


def tpe_sampler(cfg: TuneConfig) -> Any:
    """Seeded TPE; its random start-up phase is a third of the trials (Optuna's 10 would be all 8)."""
    import optuna

    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=max(2, cfg.num_trials // 3))


def driver_resources() -> dict[str, float]:
    """What a trial's driver holds: no CPU, so its trainer's workers get whole CPUs (see module doc)."""
    return dict(DRIVER_RESOURCES)


def trial_cpus(cfg: TuneConfig) -> float:
    """CPUs one trial holds while it runs: its trainer's workers (the driver holds none)."""
    return cfg.workers_per_trial * cfg.cpus_per_worker


def max_concurrent_trials(cfg: TuneConfig, cluster: dict[str, float], use_gpu: bool) -> int:
    """`tune.max_concurrent`, else as many trials as the cluster's CPUs (and GPUs) hold at once."""
    if cfg.max_concurrent is not None:
        return cfg.max_concurrent
    fit = int(cluster.get("CPU", 0.0) // trial_cpus(cfg))
    if use_gpu:
        fit = min(fit, int(cluster.get("GPU", 0.0) // cfg.workers_per_trial))
    return max(1, fit)


def search_params(params: Params) -> Params:
    """The project's params as the search sees them: trials train and validate on the ablation's
    copy of the data (`ablation.image_size`, `ablation.data_out`).

    The search and the ablation are the project's two experiments, sized for the same machine: many
    models, each trained until its val mIoU has levelled off. Sharing one copy of the data also
    means the λ the search finds are found at the resolution the ablation compares tasks at.
    """
    return data_params(params)


def trial_params(params: Params, config: dict[str, Any]) -> Params:
    """The training params of one trial: sampled λ (and lr), the tune section's budget and resources
    (and, for a seed-check run, its seed).

    λ values in `config` are relative to λs. A trial never reads tuning results itself
    (`loss.from_tuning` off): it is what produces them.
    """
    lam_s = params.loss.lambda_seg
    loss = replace(
        params.loss,
        lambda_pose=lam_s * float(config["lambda_pose"]),
        lambda_densepose=lam_s * float(config["lambda_densepose"]),
        from_tuning=False,
    )
    train = replace(
        params.train,
        epochs=params.tune.epochs,
        epoch_images=params.tune.epoch_images,
        ray_workers=params.tune.workers_per_trial,
        cpus_per_worker=params.tune.cpus_per_worker,
        batch_size=trial_batch_size(params),
        lr=float(config["lr"]) if "lr" in config else params.train.lr,
        seed=int(config["seed"]) if "seed" in config else params.train.seed,  # the seed check's runs
        val_every=1,  # ASHA decides on every epoch's val mIoU
        fault_at_epoch=None,
    )
    return replace(params, loss=loss, train=train)


# ---------------------------------------------------------------------------------------------
# Trial outcomes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialOutcome:
    """One row of tuning/trials.csv."""

    trial_id: str
    lambda_pose: float  # relative to λs
    lambda_densepose: float
    lr: float | None
    final_val_miou: float | None
    best_val_miou: float | None
    epochs: int
    status: str
    error: str = ""


def trial_status(epochs_run: int, target_epochs: int, errored: bool, finished: bool = True) -> str:
    if errored:
        return STATUS_FAILED
    if not finished:
        return STATUS_UNFINISHED
    return STATUS_COMPLETED if epochs_run >= target_epochs else STATUS_STOPPED


def best_outcome(outcomes: list[TrialOutcome]) -> TrialOutcome | None:
    """The trial with the highest val mIoU reached at any epoch (ties: the earlier trial)."""
    scored = [o for o in outcomes if o.best_val_miou is not None and not math.isnan(o.best_val_miou)]
    if not scored:
        return None
    return max(scored, key=lambda o: o.best_val_miou)


# ---------------------------------------------------------------------------------------------
# MLflow: one parent run per search, one nested run per trial, written from the Tune driver
# ---------------------------------------------------------------------------------------------

TAG_SEARCH = "spd.tune.search"  # tune.name, on the parent and every nested run
TAG_SEARCH_PATH = "spd.tune.path"  # the Tune experiment directory (a name reused elsewhere is another search)
TAG_TRIAL = "spd.tune.trial_id"
TAG_STATUS = "spd.tune.status"
TAG_CHECK = "spd.tune.check"  # best | baseline on the seed check's runs
TAG_PARENT = "mlflow.parentRunId"

CHECKPOINT_PATH_KEY = "checkpoint_path"  # added to each result by TuneReportCallback

_EXCLUDED_METRICS = {"epoch", "training_iteration", "timestamp", "pid", "time_since_restore"}


def is_trial_metric(key: str, value: Any) -> bool:
    """Metrics reported by the training loop (not Tune's bookkeeping) that belong on the trial's run."""
    if key in _EXCLUDED_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return key.startswith(("train_", "val_")) or key in ("lr", "images_per_s")


def find_parent_run(client: Any, experiment_id: str, name: str, path: str) -> str | None:
    """The parent run of the search `name` stored at `path`, if an earlier (interrupted) run made one."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SEARCH}` = '{name}' and tags.`{TAG_SEARCH_PATH}` = '{path}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    for run in runs:
        if TAG_PARENT not in run.data.tags:
            return run.info.run_id
    return None


def open_parent_run(
    uri: str, experiment: str, name: str, path: str, params: Params, *, fresh: bool
) -> tuple[str, str]:
    """The search's parent run: created for a fresh search, re-opened when one is continued.

    Returns (experiment_id, run_id).
    """
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from pipeline.runtime import get_or_create_experiment

    client = MlflowClient(tracking_uri=uri)
    experiment_id = get_or_create_experiment(client, experiment, uri)
    run_id = None if fresh else find_parent_run(client, experiment_id, name, path)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        return experiment_id, run_id
    run = client.create_run(
        experiment_id,
        run_name=name,
        tags={TAG_SEARCH: name, TAG_SEARCH_PATH: path, "spd.stage": "tune"},
    )
    logged = [
        Param(k, str(v)[:6000])
        for k, v in flatten(params_to_dict(params)).items()
        if k.split(".")[0] in ("tune", "model", "loss", "train", "prepare")
    ]
    for i in range(0, len(logged), 100):
        client.log_batch(run.info.run_id, params=logged[i : i + 100])
    return experiment_id, run.info.run_id


def end_parent_run(uri: str, run_id: str, status: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).set_terminated(run_id, status=status)


def finish_parent_run(
    uri: str,
    run_id: str,
    best: TrialOutcome,
    outcomes: list[TrialOutcome],
    artifacts: list[Any],
    seed_check: dict | None = None,
) -> None:
    """The search's summary on its parent run: the best trial, status counts, the seed check's
    paired gain and verdict, the output files."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.log_metric(run_id, f"best_{METRIC}", float(best.best_val_miou or 0.0))
    client.log_metric(run_id, "best_lambda_pose_rel", best.lambda_pose)
    client.log_metric(run_id, "best_lambda_densepose_rel", best.lambda_densepose)
    if best.lr is not None:
        client.log_metric(run_id, "best_lr", best.lr)
    client.log_metric(run_id, "trial_epochs", float(sum(o.epochs for o in outcomes)))
    for status in (STATUS_COMPLETED, STATUS_STOPPED, STATUS_FAILED):
        client.log_metric(run_id, f"trials_{status}", float(sum(o.status == status for o in outcomes)))
    client.set_tag(run_id, "spd.tune.best_trial", best.trial_id)
    if seed_check is not None:
        client.set_tag(run_id, "spd.tune.seed_check", seed_check["verdict"])
        if seed_check["delta"] is not None:
            client.log_metric(run_id, "seed_check_gain", seed_check["delta"])
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="FINISHED")


class MlflowTrialCallback(Callback):
    """Tune callback (runs in the driver): one nested MLflow run per trial, found again on resume.

    The MLflow client is built lazily so the callback pickles with the Tuner's state; a trial's
    nested run is looked up by its trial id, so a retried or resumed trial keeps its one run.
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        parent_run_id: str,
        search: str,
        lambda_seg: float,
        target_epochs: int,
        storage_filesystem: Any = None,  # where trials checkpoint, when not a directory (pickles)
    ) -> None:
        self.uri = uri
        self.storage_filesystem = storage_filesystem
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.search = search
        self.lambda_seg = lambda_seg
        self.target_epochs = target_epochs
        self._runs: dict[str, str] = {}
        self._epochs: dict[str, int] = {}
        self._logged: dict[str, set[int]] = {}  # epochs on each trial's run (from MLflow on resume)
        self._client: Any = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def run_id(self, trial: Any) -> str:
        trial_id = trial.trial_id
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{TAG_PARENT}` = '{self.parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial_id}'"
            ),
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self._create_run(trial)
        self._runs[trial_id] = run_id
        return run_id

    def _create_run(self, trial: Any) -> str:
        cfg = trial.config
        tags = {TAG_PARENT: self.parent_run_id, TAG_SEARCH: self.search, TAG_TRIAL: trial.trial_id}
        if "check" in cfg:  # a seed-check run (tuning/seed_check.py): its arm and seed
            tags[TAG_CHECK] = cfg["check"]
        name = f"check-{cfg['check']}-s{cfg['seed']}" if "check" in cfg else f"trial-{trial.trial_id}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        if "seed" in cfg:
            self.client.log_param(run_id, "seed", cfg["seed"])
        self.client.log_param(run_id, "lambda_pose_rel", cfg["lambda_pose"])
        self.client.log_param(run_id, "lambda_densepose_rel", cfg["lambda_densepose"])
        self.client.log_param(run_id, "lambda_seg", self.lambda_seg)
        self.client.log_param(run_id, "lambda_pose", self.lambda_seg * cfg["lambda_pose"])
        self.client.log_param(run_id, "lambda_densepose", self.lambda_seg * cfg["lambda_densepose"])
        if "lr" in cfg:
            self.client.log_param(run_id, "lr", cfg["lr"])
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self.run_id(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        self._epochs[trial.trial_id] = max(epoch, self._epochs.get(trial.trial_id, 0))
        logged = self._logged_epochs(trial.trial_id, run_id)
        missing = [e for e in range(1, epoch) if e not in logged]
        if missing and result.get(CHECKPOINT_PATH_KEY):
            # An interrupted search loses the report of an epoch trained and checkpointed just
            # before the interruption; the resumed trial starts after it. Its checkpoint has it.
            for row in checkpoint_history(result[CHECKPOINT_PATH_KEY], self.storage_filesystem):
                if int(row.get("epoch", 0)) in missing:
                    self._log_epoch(run_id, int(row["epoch"]), row)
        self._log_epoch(run_id, epoch, result)

    def _logged_epochs(self, trial_id: str, run_id: str) -> set[int]:
        if trial_id not in self._logged:
            history = self.client.get_metric_history(run_id, "train_loss")
            self._logged[trial_id] = {int(m.step) for m in history}
        return self._logged[trial_id]

    def _log_epoch(self, run_id: str, epoch: int, values: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in values.items() if is_trial_metric(k, v)]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        for trial_id, rid in self._runs.items():
            if rid == run_id:
                self._logged.setdefault(trial_id, set()).add(epoch)

    def _finish(self, trial: Any, errored: bool) -> None:
        run_id = self.run_id(trial)
        epochs = self._epochs.get(trial.trial_id, 0)
        last = trial.last_result or {}
        epochs = max(epochs, int(last.get("epoch", last.get("training_iteration", 0)) or 0))
        status = trial_status(epochs, self.target_epochs, errored)
        self.client.set_tag(run_id, TAG_STATUS, status)
        self.client.set_tag(run_id, "spd.tune.epochs", str(epochs))
        if errored and trial.error_file:
            self.client.set_tag(run_id, "spd.tune.error_file", str(trial.error_file))
        self.client.set_terminated(run_id, status="FAILED" if errored else "FINISHED")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, errored=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.run_id(trial)
        retries = int(self.client.get_run(run_id).data.tags.get("spd.tune.retries", "0")) + 1
        self.client.set_tag(run_id, "spd.tune.retries", str(retries))
