"""Is the search's best λ better than λ = 1 beyond seed noise? Re-trained on fresh seeds, it says.

The search keeps the maximum of its trials' val mIoU, so the best trial's own score is biased
upward (the winner's curse) and carries one seed's luck. The check re-trains the best λ (and lr,
when searched) and the baseline λp = λd = λs (the same lr) on `tune.check_seeds` — seeds no trial
trained with — to tune.epochs each, and compares them seed by seed: the paired difference with
its t confidence interval at the project's confidence level (`ablation.confidence`, via
pipeline.ablation_stats). The verdict is generated from the CI, never typed:

- *gain beyond seed noise*: the CI lies above 0;
- *worse than λ = 1 beyond seed noise*: the CI lies below 0;
- *within seed noise*: the CI includes 0 (its width and the MDE say how large a gain could hide);
- *inconclusive*: fewer than two seeds ran (no CI), or a run failed.

The runs are a second Tune experiment, `<tune.name>-check` (FIFO: each to the end), with the same
trainable, resources and MLflow callback as the search, so an interrupted check resumes too and
each run is one nested MLflow run (tagged `spd.tune.check`) under the search's parent run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pipeline.ablation_stats import Thresholds, difference
from pipeline.storage import ray_storage, read_text, remove_tree, write_text

if TYPE_CHECKING:
    from tuning.search import TrialOutcome

BEST, BASELINE = "best", "baseline"
GAIN = "gain beyond seed noise"
LOSS = "worse than λ = 1 beyond seed noise"
NOISE = "within seed noise"
INCONCLUSIVE = "inconclusive"
STATE = "spd_check.json"  # beside the check's Tune state: which best λ and seeds it checks


@dataclass(frozen=True)
class SeedCheck:
    """What best_params.yaml records under `seed_check`."""

    seeds: list[int]
    best: dict[int, float]  # seed -> best val mIoU of the best λ re-trained with that seed
    baseline: dict[int, float]  # seed -> the same for λp = λd = λs
    delta: float | None  # mean of best - baseline, paired by seed
    ci: list[float] | None  # at `confidence`
    mde: float | None  # the smallest true gain these seeds detect at ablation.power
    confidence: float
    verdict: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def arm_configs(best: TrialOutcome, seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """The check's runs as trial configs: best λ and λ = 1 (relative to λs) on every seed."""
    lr = {"lr": best.lr} if best.lr is not None else {}
    arms = {
        BEST: {"lambda_pose": best.lambda_pose, "lambda_densepose": best.lambda_densepose},
        BASELINE: {"lambda_pose": 1.0, "lambda_densepose": 1.0},
    }
    return [{**cfg, **lr, "seed": seed, "check": arm} for arm, cfg in arms.items() for seed in seeds]


def judge(
    seeds: tuple[int, ...], best: dict[int, float], baseline: dict[int, float], th: Thresholds
) -> SeedCheck:
    """The paired comparison of the two arms and its verdict in words."""
    ran = [s for s in seeds if s in best and s in baseline]
    missing = [s for s in seeds if s not in ran]
    d = difference({s: best[s] for s in ran}, {s: baseline[s] for s in ran}, th) if ran else None
    ci = list(d.ci) if d is not None and d.ci is not None else None
    level = f"{th.confidence:.0%} CI"
    if missing:
        verdict, reason = INCONCLUSIVE, f"no result for seed(s) {missing} (a run failed)"
    elif ci is None:
        verdict, reason = INCONCLUSIVE, f"{len(ran)} seed: a CI needs at least two (set tune.check_seeds)"
    elif ci[0] > 0:
        verdict, reason = GAIN, f"the {level} of the paired gain, [{ci[0]:+.4f}, {ci[1]:+.4f}], lies above 0"
    elif ci[1] < 0:
        verdict, reason = LOSS, f"the {level} of the paired gain, [{ci[0]:+.4f}, {ci[1]:+.4f}], lies below 0"
    else:
        verdict, reason = (
            NOISE,
            f"the {level} of the paired gain, [{ci[0]:+.4f}, {ci[1]:+.4f}], includes 0; with these "
            f"{len(ran)} seeds a true gain below {d.mde:.4f} mIoU would go unseen",
        )
    return SeedCheck(
        seeds=list(seeds),
        best={s: best[s] for s in seeds if s in best},
        baseline={s: baseline[s] for s in seeds if s in baseline},
        delta=d.delta if d is not None else None,
        ci=ci,
        mde=d.mde if d is not None else None,
        confidence=th.confidence,
        verdict=verdict,
        reason=reason,
    )


def prepare_experiment(exp_dir: str, best: TrialOutcome, seeds: tuple[int, ...]) -> bool:
    """Whether the check at `exp_dir` (if any) checks this best λ on these seeds; a check of
    another best λ or other seeds is removed (it is derived, not data). Returns True to resume."""
    from ray import tune

    key = hashlib.sha256(json.dumps(arm_configs(best, seeds), sort_keys=True).encode()).hexdigest()[:12]
    path, fs = ray_storage(exp_dir)
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        try:
            recorded = json.loads(read_text(f"{exp_dir}/{STATE}") or "{}").get("key")
        except (OSError, ValueError):
            recorded = None
        if recorded == key:
            return True
        print(f"spd tune: the best λ or tune.check_seeds changed; the seed check starts afresh in {exp_dir}")
        remove_tree(exp_dir)
        remove_tree(f"{exp_dir}-trials")
    write_text(f"{exp_dir}/{STATE}", json.dumps({"key": key}) + "\n")
    return False
