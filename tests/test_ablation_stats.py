"""The ablation's statistics on hand-made cells: a verdict is *effect* only when the CI excludes 0,
*no effect larger than MDE* only when the seeds could have seen one, and *inconclusive* (with the
reason) whenever a cell has not converged, is useless, or the seeds are too few for their spread."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from pipeline import ablation_stats as stats
from pipeline.ablation_report import findings, judge_cells, with_class_groups
from pipeline.config import params_from_dict
from spd.config import ConfigError
from spd.labels import LIP_CLASSES

SEG_BY_SEED = [0.40, 0.50, 0.45, 0.55]  # {seg} varies a lot from seed to seed ...
FLAT = [[1, 0.30], [2, 0.40], [3, 0.449], [4, 0.450], [5, 0.451]]  # +0.001/epoch over the last 3
RISING = [[1, 0.10], [2, 0.20], [3, 0.30]]  # +0.1/epoch
# The defaults of params.yaml's ablation section (the last test checks that they are)
THRESHOLDS = stats.Thresholds(
    confidence=0.95, power=0.8, mde_target=0.02, floor_miou=0.2, converge_epochs=3, converge_slope=0.005
)


def _cells(differences: list[float], history: list = FLAT, seg: list[float] = SEG_BY_SEED) -> list[dict]:
    """{seg} and {seg, pose} cells; {seg, pose} = {seg} + the given per-seed difference."""
    rows = []
    for ts, values in (("seg", seg), ("seg+pose", [s + d for s, d in zip(seg, differences)])):
        for seed, v in enumerate(values):
            rows.append(
                {"task_set": ts, "seed": seed, "miou": v, "cross_miou": v - 0.1, "val_miou_history": history}
            )
    return rows


def _judge(cells: list[dict], **thresholds) -> dict[str, dict]:
    """{metric: comparison} of {seg, pose} vs {seg}."""
    _, comparisons = judge_cells(cells, ("seg", "seg+pose"), dataclasses.replace(THRESHOLDS, **thresholds))
    return {c["metric"]: c for c in comparisons}


def test_a_clear_effect_is_an_effect_with_a_ci_excluding_zero() -> None:
    c = _judge(_cells([0.05, 0.06, 0.04, 0.05]))["miou"]
    assert c["verdict"] == stats.EFFECT and c["paired"] and c["n"] == 4
    assert c["delta"] == pytest.approx(0.05)
    lo, hi = c["ci"]
    half = stats.t_quantile(0.975, 3) * math.sqrt(2e-4 / 3) / 2  # sd of the differences: sqrt(2e-4/3)
    assert (lo, hi) == pytest.approx((0.05 - half, 0.05 + half)) and lo > 0
    assert "higher" in c["reason"] and "CI excludes 0" in c["reason"]


def test_a_null_with_small_spread_is_no_effect_larger_than_the_mde() -> None:
    c = _judge(_cells([0.004, -0.004, 0.002, -0.002]))["miou"]
    assert c["verdict"] == stats.NO_EFFECT
    sd = math.sqrt((2 * 0.004**2 + 2 * 0.002**2) / 3)
    mde = (stats.t_quantile(0.975, 3) + stats.t_quantile(0.8, 3)) * sd / 2
    assert c["mde"] == pytest.approx(mde) and c["mde"] <= 0.02
    assert -c["mde"] <= c["ci"][0] <= c["ci"][1] <= c["mde"]
    assert "lies within ±MDE" in c["reason"]


def test_pairing_by_seed_removes_the_seed_to_seed_spread_of_the_baseline() -> None:
    paired = _judge(_cells([0.004, -0.004, 0.002, -0.002]))["miou"]
    shuffled = _cells([0.004, -0.004, 0.002, -0.002])
    for row in shuffled[4:]:
        row["seed"] += 10  # {seg, pose} on other seeds: nothing to pair with, so Welch
    welch = _judge(shuffled)["miou"]
    assert paired["paired"] and not welch["paired"]
    assert welch["mde"] > 5 * paired["mde"]
    assert welch["verdict"] == stats.INCONCLUSIVE and "MDE" in welch["reason"]


def test_a_null_with_large_spread_is_inconclusive_because_the_mde_is_too_large() -> None:
    c = _judge(_cells([0.03, -0.03, 0.02, -0.02]))["miou"]
    assert c["verdict"] == stats.INCONCLUSIVE
    assert c["ci"][0] < 0 < c["ci"][1] and c["mde"] > 0.02
    assert f"MDE {c['mde']:.4f} > target 0.02 with 4 seeds" in c["reason"]
    needed = int(c["reason"].split("; about ")[1].split()[0])

    def mde(n: int) -> float:  # at the observed sd of the paired differences
        return (stats.t_quantile(0.975, n - 1) + stats.t_quantile(0.8, n - 1)) * c["sd"] / math.sqrt(n)

    assert mde(needed) <= 0.02 < mde(needed - 1)
    assert f"about {needed} seeds per task set would reach the target" in c["reason"]


def test_a_ci_reaching_beyond_the_mde_is_inconclusive_even_when_the_mde_is_small() -> None:
    c = _judge(_cells([0.006, 0.0, 0.004, -0.002]))["miou"]
    assert c["mde"] <= 0.02 and c["ci"][0] < 0 < c["ci"][1] and c["ci"][1] > c["mde"]
    assert c["verdict"] == stats.INCONCLUSIVE and "reaches beyond ±MDE" in c["reason"]


def test_unconverged_cells_make_even_a_clear_difference_inconclusive() -> None:
    judged = _judge(_cells([0.05, 0.06, 0.04, 0.05], history=RISING))
    for metric in ("miou", "cross_miou"):  # the cross-dataset column is judged the same way
        c = judged[metric]
        assert c["verdict"] == stats.INCONCLUSIVE and c["ci"][0] > 0
        assert c["reason"] == (
            "8 of 8 cells not converged (val mIoU still rising +0.1000/epoch over epochs 1–3 (limit 0.005): "
            "seg-s0, seg-s1, seg-s2, seg-s3, seg+pose-s0, seg+pose-s1, seg+pose-s2, seg+pose-s3)"
        )


def test_too_few_validated_epochs_is_not_converged() -> None:
    c = _judge(_cells([0.05, 0.06, 0.04, 0.05], history=[[1, 0.45]]))["miou"]
    assert c["verdict"] == stats.INCONCLUSIVE
    assert "1 validated epoch(s), the convergence rule needs the last 3" in c["reason"]
    missing = _judge([row | {"val_miou_history": None} for row in _cells([0.05] * 4)])["miou"]
    assert missing["verdict"] == stats.INCONCLUSIVE and "0 validated epoch(s)" in missing["reason"]
    garbled = _judge([row | {"val_miou_history": "rising"} for row in _cells([0.05] * 4)])["miou"]
    assert (
        garbled["verdict"] == stats.INCONCLUSIVE and "is not a list of [epoch, val mIoU]" in garbled["reason"]
    )


def test_cells_below_the_usefulness_floor_are_inconclusive() -> None:
    low = [0.05, 0.06, 0.05, 0.07]
    c = _judge(_cells([0.05, 0.06, 0.04, 0.05], seg=low))["miou"]
    assert c["verdict"] == stats.INCONCLUSIVE
    assert c["reason"] == (
        "8 of 8 cells below the usefulness floor (in-domain mIoU < 0.2: "
        "seg-s0, seg-s1, seg-s2, seg-s3, seg+pose-s0, seg+pose-s1, seg+pose-s2, seg+pose-s3)"
    )
    assert (
        _judge(_cells([0.05, 0.06, 0.04, 0.05], seg=low), floor_miou=0.0)["miou"]["verdict"] == stats.EFFECT
    )


def test_a_single_seed_has_no_ci_and_is_inconclusive() -> None:
    c = _judge(_cells([0.1], seg=[0.5]))["miou"]
    assert c["ci"] is None and c["mde"] is None and c["verdict"] == stats.INCONCLUSIVE
    assert "single seed" in c["reason"]


def test_findings_state_numbers_verdict_and_reason_and_never_claim_significance() -> None:
    cells = _cells([0.03, -0.03, 0.02, -0.02], history=RISING)
    status, comparisons = judge_cells(cells, ("seg", "seg+pose"), THRESHOLDS)
    lines = findings(comparisons, status, THRESHOLDS)
    assert lines[0].startswith("{seg, pose} vs {seg}, in-domain mIoU: Δ = +0.0000, 95% CI [")
    assert "(4 seeds, paired by seed) → **inconclusive**: 8 of 8 cells not converged (val mIoU" in lines[0]
    assert "Verdicts: 0 effect, 0 no effect larger than MDE, 2 inconclusive." in lines
    assert not any("significant" in line or "σ" in line for line in lines)


def test_t_distribution_matches_the_printed_tables() -> None:
    table = {  # (p, df): t quantile
        (0.975, 1): 12.706, (0.975, 2): 4.303, (0.975, 4): 2.776, (0.975, 10): 2.228, (0.975, 30): 2.042,
        (0.95, 5): 2.015, (0.8, 1): 1.376, (0.8, 2): 1.061, (0.8, 10): 0.879,
    }  # fmt: skip
    for (p, df), value in table.items():
        assert stats.t_quantile(p, df) == pytest.approx(value, abs=6e-4)
        assert stats.t_quantile(1 - p, df) == pytest.approx(-value, abs=6e-4)
        assert stats.t_cdf(stats.t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)
    assert stats.t_quantile(0.975, 1e6) == pytest.approx(1.95996, abs=1e-4)  # the normal limit


def test_class_groups_split_left_right_parts_from_the_rest() -> None:
    iou = {name: 0.5 for name in LIP_CLASSES} | {"left_arm": 0.2, "right_arm": 0.4, "glove": None}
    cell = with_class_groups({"per_class_iou": iou})
    lateral = [0.2, 0.4] + [0.5] * 4  # arms, legs, shoes
    assert cell["miou_lr"] == pytest.approx(sum(lateral) / 6)
    assert cell["miou_rest"] == pytest.approx(0.5)  # 13 classes incl. background; glove (NaN) skipped
    assert with_class_groups({})["miou_lr"] is None  # a cell recorded without per-class IoU


@pytest.mark.parametrize(
    ("key", "value"),
    [("converge_epochs", 1), ("confidence", 1.0), ("power", 0), ("mde_target", -0.1), ("floor_miou", 1.5)],
)
def test_statistics_thresholds_are_validated_params(project_root: Path, key: str, value: float) -> None:
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    assert stats.Thresholds.of(params_from_dict(raw).ablation) == THRESHOLDS
    raw["ablation"][key] = value
    with pytest.raises(ConfigError, match=f"ablation.{key}"):
        params_from_dict(raw)
