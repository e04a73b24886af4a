"""`spd tune`: Ray Tune search of the loss weights λp, λd (relative to λs), optionally the lr.

Each trial is a small driver that launches a TorchTrainer (`pipeline.train.build_trainer`), so a
trial can itself train on several workers or GPUs; its per-epoch reports reach Tune through
`TuneReportCallback`. Optuna's TPE proposes λ, ASHA stops trials whose val mIoU falls behind, and
one MLflow parent run holds one nested run per trial, all written from this process. Re-running
with the same `tune.name` continues an interrupted search. Outputs (atomic): `best_params.yaml`
(read by the train stage when `loss.from_tuning` is true), `trials.csv` and `lambda_miou.png`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import runtime, train_state
from pipeline.config import Params
from pipeline.storage import ray_storage, read_text, remove_tree, write_text
from spd.config import ConfigError, params_to_dict
from spd.errors import SpdError

if TYPE_CHECKING:
    from tuning.search import TrialOutcome
    from tuning.seed_check import SeedCheck

SEARCH_STATE = "spd_search.json"  # beside Tune's state: what the search was started with
WORKER_START_TIMEOUT_S = 600


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="discard an earlier search of the same tune.name instead of continuing it",
    )


def run(params: Params, args: argparse.Namespace) -> int:
    check_searchable(params)  # before Ray starts
    root = runtime.project_root(getattr(args, "params", None))
    outcome = run_search(params, project_root=root, fresh=bool(getattr(args, "fresh", False)))
    if outcome.interrupted:
        print(
            f"spd tune: search {params.tune.name} interrupted; run the same command again to continue it",
        )
        return 130
    best = outcome.best
    print(
        f"spd tune: {len(outcome.trials)} trials; best {best.trial_id}: λp/λs {best.lambda_pose:.4g}, "
        f"λd/λs {best.lambda_densepose:.4g}"
        + (f", lr {best.lr:.3g}" if best.lr is not None else "")
        + f", val mIoU {best.best_val_miou:.4f} -> {outcome.best_params_path}"
    )
    return 0


def check_searchable(params: Params) -> None:
    """What the params validation cannot know on its own: a search needs λs > 0 (λ are relative)."""
    if params.loss.lambda_seg <= 0:
        raise ConfigError("loss.lambda_seg: must be > 0 for a search (λp, λd are sampled relative to it)")


def search_fingerprint(params: Params, data_dir: Path) -> str:
    """What makes two runs the same search: its space and budget, the model, loss and training
    knobs, and the prepared data. (Not the code: an edit elsewhere must not orphan a search.)"""
    tune = {
        k: v
        for k, v in params_to_dict(params.tune).items()
        if k not in ("max_concurrent", "max_failures", "out_dir", "storage_path", "name", "check_seeds")
    }
    train = train_state.weights_train_config(params)
    loss = {"lambda_seg": params.loss.lambda_seg, "heatmap_sigma": params.loss.heatmap_sigma}
    h = hashlib.sha256(json.dumps([tune, params_to_dict(params.model), loss, train], sort_keys=True).encode())
    train_state.hash_prepared_data(h, data_dir)
    return h.hexdigest()[:12]


class NoTrialReportedError(SpdError):
    """Every trial of the search failed before reporting val mIoU."""


@dataclass(frozen=True)
class SearchOutcome:
    trials: list[TrialOutcome]  # one per trial, in Tune's order
    best: TrialOutcome | None  # None when interrupted
    interrupted: bool  # some trials (or seed-check runs) still to run: the outputs were not written
    best_params_path: Path | None
    seed_check: SeedCheck | None = None  # None: interrupted, or tune.check_seeds is empty


def run_trial(config: dict[str, Any], base_params: Params, project_root: str, train_storage: str) -> None:
    """One Tune trial: a TorchTrainer with this trial's λ; its epochs report to Tune (not MLflow)."""
    import os

    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train import build_trainer
    from tuning.search import trial_params

    # Trials start while others train: give worker start-up more than Ray's 60 s on a busy machine
    # (propagated to the controller and workers; a user's own setting wins).
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(WORKER_START_TIMEOUT_S))
    params = trial_params(base_params, config)
    trial_id = tune.get_context().get_trial_id()
    trainer = build_trainer(
        params,
        f"trial-{trial_id}",  # a retried or resumed trial continues from its own latest checkpoint
        train_storage,
        project_root=Path(project_root),
        mlflow_run_id=None,  # the Tune driver logs each trial to MLflow, once
        callbacks=[TuneReportCallback()],
        verbose=False,
    )
    trainer.fit()


def run_search(
    params: Params, *, project_root: Path, fresh: bool = False, early_stopping: bool = True
) -> SearchOutcome:
    """Run (or continue) the search named tune.name; write the outputs when every trial is done.

    `early_stopping=False` runs every trial to tune.epochs (FIFO instead of ASHA): the baseline
    bench/bench_asha.py compares against.
    """
    from ray import tune

    from tuning import search

    check_searchable(params)
    params = search.search_params(params)
    root = Path(project_root).resolve()
    tc = params.tune
    data_dir = train_state.check_prepared(root, params, "ablation.data_out; run `spd ablation data`")
    storage = runtime.resolve_path(root, tc.storage_path)
    exp_dir = f"{storage}/{tc.name}"
    fingerprint = search_fingerprint(params, data_dir)
    if fresh:  # a directory or an s3:// prefix
        for suffix in ("", "-trials", "-check", "-check-trials"):
            remove_tree(f"{exp_dir}{suffix}")

    uri = runtime.tracking_uri(params.mlflow, root)
    runtime.check_tracking_reachable(uri)
    runtime.init_ray(params.ray)

    exp_path, storage_fs = ray_storage(exp_dir)  # s3://bucket/p/name -> (bucket/p/name, pyarrow S3)
    resuming = tune.Tuner.can_restore(exp_path, storage_filesystem=storage_fs)
    if resuming:
        _check_same_search(exp_dir, fingerprint, tc.name)
    experiment_id, parent_run_id = search.open_parent_run(
        uri, params.mlflow.experiment, tc.name, exp_dir, params, fresh=not resuming
    )
    trainable = _trainable(params, root, f"{exp_dir}-trials")
    if resuming:
        print(f"spd tune: continuing search {tc.name} from {exp_dir}")
        tuner = tune.Tuner.restore(
            exp_path, trainable=trainable, resume_unfinished=True, storage_filesystem=storage_fs
        )
    else:
        # A stopped trial's placement group is freed by Ray Train's own PlacementGroupCleaner
        # (it needs the dashboard's state API, which runtime.init_ray starts).
        callbacks = [_mlflow_callback(params, uri, experiment_id, parent_run_id, storage_fs)]
        tuner = _new_tuner(params, trainable, storage, callbacks, early_stopping)
        _write_search_state(exp_dir, fingerprint, tc.name)

    # The parent run ends once, here: FAILED when no trial reported; KILLED when interrupted (Ctrl-C
    # inside Tune returns with trials unfinished, elsewhere it raises) or stopped by an error, as
    # running the search again continues it.
    try:
        tuner.fit()
        outcome = _finish(params, root, exp_dir, uri, experiment_id, parent_run_id)
    except NoTrialReportedError:
        search.end_parent_run(uri, parent_run_id, "FAILED")
        raise
    except BaseException:
        search.end_parent_run(uri, parent_run_id, "KILLED")
        raise
    if outcome.interrupted:
        search.end_parent_run(uri, parent_run_id, "KILLED")
    return outcome


def _trainable(params: Params, root: Path, train_storage: str) -> Any:
    """The trial driver with its fixed arguments and resources (search and seed check alike)."""
    from ray import tune

    from tuning import search

    return tune.with_resources(
        tune.with_parameters(
            run_trial, base_params=params, project_root=str(root), train_storage=train_storage
        ),
        search.driver_resources(),
    )


def _mlflow_callback(params: Params, uri: str, experiment_id: str, parent_run_id: str, fs: Any) -> Any:
    from tuning import search

    return search.MlflowTrialCallback(
        uri,
        experiment_id,
        parent_run_id,
        params.tune.name,
        params.loss.lambda_seg,
        params.tune.epochs,
        storage_filesystem=fs,
    )


def _new_tuner(params: Params, trainable: Any, storage: str, callbacks: list, early_stopping: bool) -> Any:
    """A fresh Tuner: seeded TPE (Optuna) under a concurrency limit, ASHA (or FIFO) on val mIoU."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from tuning import search

    tc = params.tune
    storage_path, storage_fs = ray_storage(storage)  # s3://bucket/p -> (bucket/p, pyarrow S3)
    concurrency = search.max_concurrent_trials(tc, ray.cluster_resources(), params.train.use_gpu)
    print(f"spd tune: search {tc.name}: {tc.num_trials} trials, up to {concurrency} at a time")
    searcher = OptunaSearch(metric=search.METRIC, mode=search.MODE, sampler=search.tpe_sampler(tc))
    scheduler = (
        ASHAScheduler(
            time_attr="epoch",
            metric=search.METRIC,
            mode=search.MODE,
            max_t=tc.epochs,
            grace_period=tc.grace_period,
            reduction_factor=tc.reduction_factor,
        )
        if early_stopping
        else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        param_space=search.search_space(tc, params.model.tasks),
        tune_config=tune.TuneConfig(
            num_samples=tc.num_trials,
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            scheduler=scheduler,
        ),
        run_config=tune.RunConfig(
            name=tc.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=tune.FailureConfig(max_failures=tc.max_failures),
            callbacks=callbacks,
            verbose=1,
        ),
    )


def _outcomes(exp_dir: str, target_epochs: int) -> list[TrialOutcome]:
    """Every trial of the Tune experiment at `exp_dir`, from its saved state, not the in-memory
    trials: after a Ctrl-C Tune's clean-up marks the trials it stops as terminated, while the
    state records them as still to be run."""
    from tuning import report

    return [report.outcome_of(t, target_epochs) for t in _trials(exp_dir)]


def _trials(exp_dir: str) -> list[Any]:
    from ray import tune

    exp_path, storage_fs = ray_storage(exp_dir)
    return tune.ExperimentAnalysis(exp_path, storage_filesystem=storage_fs).trials


def _finish(
    params: Params, root: Path, exp_dir: str, uri: str, experiment_id: str, parent_run_id: str
) -> SearchOutcome:
    """Once every trial is done: the seed check, then trials.csv, best_params.yaml, the plot and
    the parent run's summary (nothing is written while either is unfinished)."""
    from tuning import report, search

    tc = params.tune
    outcomes = _outcomes(exp_dir, tc.epochs)
    if any(o.status == search.STATUS_UNFINISHED for o in outcomes):
        return SearchOutcome(outcomes, None, True, None)

    out_dir = Path(runtime.resolve_path(root, tc.out_dir))
    best = search.best_outcome(outcomes)
    if best is None:
        report.write_trials_csv(out_dir / "trials.csv", outcomes)
        raise NoTrialReportedError(
            f"search {tc.name}: no trial reported {search.METRIC} (all {len(outcomes)} failed; "
            f"see {out_dir / 'trials.csv'} and the error files under {exp_dir})"
        )
    check = None
    if tc.check_seeds:
        check = _seed_check(params, root, f"{exp_dir}-check", best, uri, experiment_id, parent_run_id)
        if check is None:
            return SearchOutcome(outcomes, None, True, None)

    report.write_trials_csv(out_dir / "trials.csv", outcomes)
    best_path = out_dir / "best_params.yaml"
    report.write_best_params(best_path, best, params, search.METRIC, check)
    report.plot_lambda_miou(
        out_dir / "lambda_miou.png", outcomes, best, (tc.lambda_pose, tc.lambda_densepose)
    )
    report.write_search_metrics(root / runtime.METRICS_DIR / "search.json", best, outcomes, check)
    search.finish_parent_run(
        uri,
        parent_run_id,
        best,
        outcomes,
        [best_path, out_dir / "trials.csv", out_dir / "lambda_miou.png"],
        check.as_dict() if check else None,
    )
    return SearchOutcome(outcomes, best, False, best_path, check)


def _seed_check(
    params: Params,
    root: Path,
    exp_dir: str,
    best: TrialOutcome,
    uri: str,
    experiment_id: str,
    parent_run_id: str,
) -> SeedCheck | None:
    """Re-train the best λ and λ = 1 on tune.check_seeds (tuning/seed_check.py); None when
    interrupted (the next run continues it)."""
    from ray import tune

    from pipeline.ablation_stats import Thresholds
    from tuning import report, search, seed_check

    tc = params.tune
    exp_path, storage_fs = ray_storage(exp_dir)
    trainable = _trainable(params, root, f"{exp_dir}-trials")
    if seed_check.prepare_experiment(exp_dir, best, tc.check_seeds):
        print(f"spd tune: continuing the seed check from {exp_dir}")
        tuner = tune.Tuner.restore(
            exp_path, trainable=trainable, resume_unfinished=True, storage_filesystem=storage_fs
        )
    else:
        configs = seed_check.arm_configs(best, tc.check_seeds)
        callback = _mlflow_callback(params, uri, experiment_id, parent_run_id, storage_fs)
        tuner = _new_check_tuner(params, trainable, exp_dir, configs, callback)
    tuner.fit()
    arms: dict[str, dict[int, float]] = {seed_check.BEST: {}, seed_check.BASELINE: {}}
    for trial in _trials(exp_dir):
        outcome = report.outcome_of(trial, tc.epochs)
        if outcome.status == search.STATUS_UNFINISHED:
            return None
        if outcome.status == search.STATUS_COMPLETED and outcome.best_val_miou is not None:
            arms[trial.config["check"]][int(trial.config["seed"])] = outcome.best_val_miou
    th = Thresholds.of(params.ablation)
    check = seed_check.judge(tc.check_seeds, arms[seed_check.BEST], arms[seed_check.BASELINE], th)
    print(f"spd tune: seed check: {check.verdict}: {check.reason}")
    return check


def _new_check_tuner(params: Params, trainable: Any, exp_dir: str, configs: list[dict], callback: Any) -> Any:
    """A Tuner running each of `configs` once to tune.epochs (FIFO), as many at a time as fit."""
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from tuning import search

    tc = params.tune
    print(f"spd tune: seed check: best λ and λ = 1 on seeds {list(tc.check_seeds)} ({len(configs)} runs)")
    # One grid point per run; each key looked up from its run's config keeps the configs flat, as
    # the trial driver and the MLflow callback read them.
    space: dict[str, Any] = {"run": tune.grid_search(list(range(len(configs))))}
    for key in configs[0]:
        space[key] = tune.sample_from(lambda spec, key=key: configs[spec.config.run][key])
    storage, name = exp_dir.rsplit("/", 1)
    storage_path, storage_fs = ray_storage(storage)
    concurrency = search.max_concurrent_trials(tc, ray.cluster_resources(), params.train.use_gpu)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(scheduler=FIFOScheduler(), max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=tune.FailureConfig(max_failures=tc.max_failures),
            callbacks=[callback],
            verbose=1,
        ),
    )


def _write_search_state(exp_dir: str, fingerprint: str, name: str) -> None:
    write_text(f"{exp_dir}/{SEARCH_STATE}", json.dumps({"name": name, "fingerprint": fingerprint}) + "\n")


def _check_same_search(exp_dir: str, fingerprint: str, name: str) -> None:
    """Continuing is only right for the same search; other params would mix incomparable trials."""
    try:
        recorded = json.loads(read_text(f"{exp_dir}/{SEARCH_STATE}") or "{}").get("fingerprint")
    except (OSError, ValueError):
        recorded = None
    if recorded != fingerprint:
        raise SpdError(
            f"{exp_dir} holds a search named {name!r} started with other params or data; "
            "set a new tune.name, or run `spd tune --fresh` to discard it"
        )
