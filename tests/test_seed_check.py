"""The λ search's seed check: the best λ against λ = 1, re-trained on fresh seeds. Its verdict is
drawn from the paired CI — a gain beyond seed noise, a loss, or within noise with the gain that
could hide there — and is inconclusive when it cannot be drawn. Hand-made results, no training."""

from __future__ import annotations

import pytest
import yaml

from pipeline.ablation_stats import Thresholds
from pipeline.config import load_params
from tuning import seed_check
from tuning.search import TrialOutcome

TH = Thresholds(
    confidence=0.95, power=0.8, mde_target=0.02, floor_miou=0.2, converge_epochs=3, converge_slope=0.005
)
SEEDS = (1, 2, 3)


def _best(lr: float | None = None) -> TrialOutcome:
    return TrialOutcome("t1", 0.3, 4.0, lr, 0.41, 0.42, 4, "completed")


def test_the_check_trains_best_lambda_and_lambda_one_on_every_seed_with_the_same_lr() -> None:
    configs = seed_check.arm_configs(_best(lr=0.003), (1, 2))
    assert configs == [
        {"lambda_pose": 0.3, "lambda_densepose": 4.0, "lr": 0.003, "seed": 1, "check": "best"},
        {"lambda_pose": 0.3, "lambda_densepose": 4.0, "lr": 0.003, "seed": 2, "check": "best"},
        {"lambda_pose": 1.0, "lambda_densepose": 1.0, "lr": 0.003, "seed": 1, "check": "baseline"},
        {"lambda_pose": 1.0, "lambda_densepose": 1.0, "lr": 0.003, "seed": 2, "check": "baseline"},
    ]
    assert all("lr" not in c for c in seed_check.arm_configs(_best(), (1,)))  # train.lr for both


def test_a_consistent_gain_on_every_seed_is_beyond_seed_noise() -> None:
    check = seed_check.judge(SEEDS, {1: 0.45, 2: 0.47, 3: 0.46}, {1: 0.40, 2: 0.42, 3: 0.405}, TH)
    assert check.verdict == seed_check.GAIN
    assert check.delta == pytest.approx(0.0517, abs=1e-4)
    assert check.ci[0] > 0
    assert "lies above 0" in check.reason


def test_a_consistent_loss_is_worse_than_lambda_one() -> None:
    check = seed_check.judge(SEEDS, {1: 0.40, 2: 0.42, 3: 0.405}, {1: 0.45, 2: 0.47, 3: 0.46}, TH)
    assert check.verdict == seed_check.LOSS
    assert check.ci[1] < 0


def test_a_gain_that_flips_sign_across_seeds_is_within_noise_and_says_what_could_hide() -> None:
    check = seed_check.judge(SEEDS, {1: 0.47, 2: 0.40, 3: 0.45}, {1: 0.44, 2: 0.43, 3: 0.44}, TH)
    assert check.verdict == seed_check.NOISE
    assert check.ci[0] < 0 < check.ci[1]
    assert f"a true gain below {check.mde:.4f} mIoU would go unseen" in check.reason
    assert check.mde > abs(check.delta)


def test_one_seed_or_a_failed_run_is_inconclusive_with_the_reason() -> None:
    one = seed_check.judge((1,), {1: 0.5}, {1: 0.4}, TH)
    assert one.verdict == seed_check.INCONCLUSIVE and one.ci is None
    assert "a CI needs at least two" in one.reason
    failed = seed_check.judge((1, 2), {1: 0.5, 2: 0.5}, {1: 0.4}, TH)
    assert failed.verdict == seed_check.INCONCLUSIVE
    assert "no result for seed(s) [2]" in failed.reason


def test_the_check_is_written_as_plain_yaml_the_train_stage_still_reads(tmp_path, project_root) -> None:
    from pipeline.config import read_tuning_results
    from tuning.report import write_best_params

    params = load_params(project_root / "params.yaml")
    check = seed_check.judge(SEEDS, {1: 0.45, 2: 0.47, 3: 0.46}, {1: 0.40, 2: 0.42, 3: 0.405}, TH)
    path = tmp_path / "best_params.yaml"
    write_best_params(path, _best(), params, "val_miou", check)
    doc = yaml.safe_load(path.read_text())
    assert doc["seed_check"]["verdict"] == seed_check.GAIN
    assert doc["seed_check"]["best"] == {1: 0.45, 2: 0.47, 3: 0.46}
    assert f"# {seed_check.GAIN} — " in path.read_text()
    assert read_tuning_results(path) == {"lambda_pose": 0.3, "lambda_densepose": 4.0}
