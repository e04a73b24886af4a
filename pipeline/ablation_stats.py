"""What the ablation's seeds can and cannot tell: differences, confidence intervals, power, verdicts.

For a task set against {seg} on one metric: the difference of means with its confidence interval
(Student t; paired by seed when both arms ran the same seeds, Welch otherwise), the minimum
detectable effect (MDE) at the configured power, and a verdict in generated words:

- *effect*: every cell converged and above the usefulness floor, and the CI excludes 0;
- *no effect larger than MDE*: every cell converged and useful, MDE <= target, CI within ±MDE;
- *inconclusive*: otherwise, with the reason (not converged, below the floor, one seed, MDE above
  the target, or a CI that reaches beyond ±MDE).

Pure: numbers in, numbers and words out; numpy and math only (scipy is not a dependency, so the
t distribution is computed here: CDF from the regularised incomplete beta function, quantile by
bisection).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

EFFECT = "effect"
NO_EFFECT = "no effect larger than MDE"
INCONCLUSIVE = "inconclusive"
MAX_SEEDS_SUGGESTED = 100  # "about N seeds would reach the target" is searched up to this many
LATERAL_PREFIXES = ("left_", "right_")  # spd.labels class names of the parts a flip swaps


# ---------------------------------------------------------------------------------------------
# Student t distribution
# ---------------------------------------------------------------------------------------------


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _regularised_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with `df` (> 0, not necessarily integer) degrees of freedom."""
    tail = 0.5 * _regularised_beta(df / 2.0, 0.5, df / (df + x * x))
    return 1.0 - tail if x > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The x with P(T <= x) = p, for 0 < p < 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must lie strictly between 0 and 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------------------------------------
# Thresholds and per-cell status
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """The ablation section's statistics keys (params.yaml holds their values and why)."""

    confidence: float  # of the CIs; the MDE's test is two-sided at alpha = 1 - confidence
    power: float  # at which the MDE is computed
    mde_target: float  # the MDE a decisive ablation must reach
    floor_miou: float  # a cell below this in-domain mIoU supports no claim
    converge_epochs: int  # convergence is judged on the last this-many validated epochs ...
    converge_slope: float  # ... over which val mIoU may rise at most this much per epoch

    @classmethod
    def of(cls, cfg: object) -> Thresholds:
        """From any object with these attributes (the typed ablation config)."""
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class CellStatus:
    converged: bool
    useful: bool  # in-domain mIoU at or above the floor
    slope: float | None  # least-squares val mIoU rise per epoch over the last validated epochs
    problems: tuple[str, ...]  # generated words; empty when converged and useful


def _val_curve(history: object) -> list[tuple[float, float]] | None:
    """[(epoch, val mIoU)] without missing values; None when `history` is not such a list."""
    try:
        return [(float(e), float(v)) for e, v in history or () if v is not None and math.isfinite(v)]
    except (TypeError, ValueError):  # a hand-edited or foreign metrics.json: judged, not crashed on
        return None


def cell_status(history: Sequence[Sequence[float]] | None, miou: float | None, th: Thresholds) -> CellStatus:
    """Judge one cell from its [[epoch, val mIoU], ...] history and its final in-domain mIoU."""
    problems: list[str] = []
    points, needed, slope = _val_curve(history), max(2, th.converge_epochs), None
    if points is None:
        problems.append("not converged: val_miou_history is not a list of [epoch, val mIoU]")
    elif len(points) < needed:
        problems.append(
            f"not converged: {len(points)} validated epoch(s), the convergence rule needs the last {needed}"
        )
    else:
        epochs, values = np.array(points[-needed:]).T
        slope = float(np.polyfit(epochs, values, 1)[0])
        if slope > th.converge_slope:
            problems.append(
                f"not converged: val mIoU still rising {slope:+.4f}/epoch over epochs "
                f"{epochs[0]:g}–{epochs[-1]:g} (limit {th.converge_slope:g})"
            )
    useful = miou is not None and miou >= th.floor_miou
    if not useful:
        shown = "missing" if miou is None else f"< {th.floor_miou:g}"
        problems.append(f"below the usefulness floor: in-domain mIoU {shown}")
    converged = slope is not None and slope <= th.converge_slope
    return CellStatus(converged, useful, slope, tuple(problems))


# ---------------------------------------------------------------------------------------------
# Difference of means, CI, MDE
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    delta: float  # mean(task set) - mean({seg})
    n: int  # seeds per arm (pairs when paired; the smaller arm otherwise)
    paired: bool  # both arms ran the same seeds: differences taken seed by seed
    sd: float | None  # sd of the paired differences, or the arms' pooled sd (Welch); None: one seed
    se: float | None  # standard error of delta
    df: float | None  # degrees of freedom of the t distribution (n - 1 paired; Welch otherwise)
    ci: tuple[float, float] | None
    mde: float | None  # (t[1 - alpha/2, df] + t[power, df]) * se; None: undefined (one seed)


def _mde(se: float, df: float, th: Thresholds) -> float:
    return (t_quantile(1.0 - (1.0 - th.confidence) / 2.0, df) + t_quantile(th.power, df)) * se


def difference(values: Mapping[int, float], base: Mapping[int, float], th: Thresholds) -> Difference:
    """values, base: {seed: metric} of the task set and of {seg}."""
    if set(values) == set(base):
        d = np.array([values[s] - base[s] for s in sorted(values)])
        n, delta = len(d), float(d.mean())
        sd = float(d.std(ddof=1)) if n > 1 else None
        se, df = (sd / math.sqrt(n), n - 1.0) if sd is not None else (None, None)
        paired = True
    else:
        a, b = np.array(list(values.values())), np.array(list(base.values()))
        n, delta, paired = min(len(a), len(b)), float(a.mean() - b.mean()), False
        sd = se = df = None
        if n > 1:
            va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
            se = math.sqrt(va + vb)
            sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2.0)
            denominator = va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)
            df = (va + vb) ** 2 / denominator if denominator > 0 else len(a) + len(b) - 2.0
    if se is None or df is None:
        return Difference(delta, n, paired, None, None, None, None, None)
    half = t_quantile(1.0 - (1.0 - th.confidence) / 2.0, df) * se
    return Difference(delta, n, paired, sd, se, df, (delta - half, delta + half), _mde(se, df, th))


def seeds_for_target(diff: Difference, th: Thresholds) -> int | None:
    """About how many seeds per arm would bring the MDE to the target at this spread (None: > 100)."""
    if diff.sd is None:
        return None

    def mde_at(n: int) -> float:  # the spread held fixed; decreases with n
        se = diff.sd / math.sqrt(n) if diff.paired else diff.sd * math.sqrt(2.0 / n)
        return _mde(se, n - 1.0 if diff.paired else 2.0 * n - 2.0, th)

    lo, hi = 2, MAX_SEEDS_SUGGESTED
    if mde_at(hi) > th.mde_target:
        return None
    while lo < hi:  # the smallest n with mde_at(n) <= target
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if mde_at(mid) <= th.mde_target else (mid + 1, hi)
    return lo


# ---------------------------------------------------------------------------------------------
# Verdict
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    verdict: str  # EFFECT, NO_EFFECT or INCONCLUSIVE
    reason: str  # generated words


FLAGS = ("not converged", "below the usefulness floor")  # the prefixes of CellStatus.problems


def _flagged(statuses: Mapping[str, CellStatus], flag: str) -> str | None:
    """'N of M cells <flag> (<detail>: cell, cell; <detail>: cell)', or None when no cell has it."""
    by_detail: dict[str, list[str]] = {}
    for name, s in statuses.items():
        for p in s.problems:
            if p.startswith(flag + ": "):
                by_detail.setdefault(p.removeprefix(flag + ": "), []).append(name)
    if not by_detail:
        return None
    count = sum(len(names) for names in by_detail.values())
    details = "; ".join(f"{detail}: {', '.join(names)}" for detail, names in by_detail.items())
    return f"{count} of {len(statuses)} cells {flag} ({details})"


def judge(diff: Difference, statuses: Mapping[str, CellStatus], th: Thresholds) -> Verdict:
    """The verdict on one comparison; statuses: {cell name: status} of the cells of both arms."""
    flagged = [text for text in (_flagged(statuses, flag) for flag in FLAGS) if text]
    if flagged:
        return Verdict(INCONCLUSIVE, "; ".join(flagged))
    if diff.ci is None or diff.mde is None:
        return Verdict(INCONCLUSIVE, "a single seed per task set: no spread, so no CI and no MDE")
    lo, hi = diff.ci
    pct = f"{th.confidence:.0%}"
    if lo > 0 or hi < 0:
        direction = "higher" if diff.delta > 0 else "lower"
        return Verdict(EFFECT, f"{direction}; the {pct} CI excludes 0")
    if diff.mde > th.mde_target:
        needed = seeds_for_target(diff, th)
        more = f"about {needed}" if needed is not None else f"more than {MAX_SEEDS_SUGGESTED}"
        return Verdict(
            INCONCLUSIVE,
            f"MDE {diff.mde:.4f} > target {th.mde_target:g} with {diff.n} seeds at this spread; "
            f"{more} seeds per task set would reach the target",
        )
    if lo < -diff.mde or hi > diff.mde:
        return Verdict(INCONCLUSIVE, f"the {pct} CI reaches beyond ±MDE = ±{diff.mde:.4f}")
    return Verdict(NO_EFFECT, f"the {pct} CI lies within ±MDE = ±{diff.mde:.4f} (target {th.mde_target:g})")


def compare(
    values: Mapping[int, float],
    base: Mapping[int, float],
    statuses: Mapping[str, CellStatus],
    th: Thresholds,
) -> dict:
    """One comparison as plain data: the Difference's fields plus verdict and reason."""
    diff = difference(values, base, th)
    return asdict(diff) | asdict(judge(diff, statuses, th))


def describe(comparison: Mapping, subject: str, th: Thresholds) -> str:
    """One generated sentence: numbers first, then the verdict and its reason."""
    c = comparison
    pairing = "paired by seed" if c["paired"] else "unpaired (Welch)"
    numbers = f"Δ = {c['delta']:+.4f}"
    if c["ci"] is not None:
        numbers += (
            f", {th.confidence:.0%} CI [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}], MDE {c['mde']:.4f} "
            f"({c['n']} seeds, {pairing})"
        )
    return f"{subject}: {numbers} → **{c['verdict']}**: {c['reason']}."


def method_text(th: Thresholds) -> str:
    """The statistics used, in words, with the configured numbers (for the report)."""
    alpha = 1.0 - th.confidence
    return (
        f"Δ = mean(task set) − mean({{seg}}). When both arms ran the same seeds (same data order, "
        f"augmentation and initial weights of the shared layers) Δ is the mean of the per-seed "
        f"differences d, SE = sd(d)/√n, df = n − 1; otherwise Welch's SE and df. "
        f"CI = Δ ± t[1 − α/2, df]·SE with α = {alpha:.2g}. Minimum detectable effect at "
        f"{th.power:.0%} power: MDE = (t[1 − α/2, df] + t[{th.power:g}, df])·SE (the usual power "
        "approximation with t quantiles). A cell has converged when the least-squares slope of its "
        f"val mIoU over its last {th.converge_epochs} validated epochs is at most "
        f"{th.converge_slope:g} per epoch; it is useful when its in-domain mIoU is at least "
        f"{th.floor_miou:g}. Verdict: *{INCONCLUSIVE}* if any cell of either arm has not converged "
        f"or is below the floor, or with one seed; else *{EFFECT}* if the CI excludes 0; else "
        f"*{INCONCLUSIVE}* if MDE > {th.mde_target:g} (the target) or the CI reaches beyond ±MDE; "
        f"else *{NO_EFFECT}*. Each CI holds for its own comparison: across k comparisons about "
        f"{alpha:.2g}·k *{EFFECT}* verdicts are expected by chance alone."
    )


# ---------------------------------------------------------------------------------------------
# Class groups
# ---------------------------------------------------------------------------------------------


def class_group_mious(per_class_iou: Sequence[float], class_names: Sequence[str]) -> dict[str, float | None]:
    """{'miou_lr': mean IoU of the left/right parts, 'miou_rest': of every other class (incl.
    background)}; classes with no pixels in prediction or ground truth (NaN) are skipped."""
    if len(per_class_iou) != len(class_names):
        raise ValueError(f"{len(per_class_iou)} per-class IoUs for {len(class_names)} class names")
    iou = np.array([np.nan if v is None else v for v in per_class_iou], dtype=float)
    lateral = np.array([n.startswith(LATERAL_PREFIXES) for n in class_names], dtype=bool)
    out: dict[str, float | None] = {}
    for key, mask in (("miou_lr", lateral), ("miou_rest", ~lateral)):
        chosen = iou[mask & np.isfinite(iou)]
        out[key] = float(chosen.mean()) if chosen.size else None
    return out
