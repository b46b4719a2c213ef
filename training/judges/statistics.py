"""The statistics the judges decide with: pure functions of numbers (no Django, no models).

    paired_bootstrap(differences, confidence, seed=0) -> BootstrapResult   (heldout, llm)
    sign_test(wins, losses) -> float                                         (demo: one-sided p)
    two_proportions(up_a, n_a, up_b, n_b, confidence) -> TwoProportions      (canary)
    wilson_interval(successes, n, confidence) -> (low, high)                 (win rates)
    percent(x), percent_range(low, high)                                     (the verdict sentences)

"Better at confidence c" everywhere: the two-sided c confidence interval of the candidate's
advantage lies wholly above "no difference" (0, or a 50 % win rate) — the interval the verdict
sentence shows — which is a one-sided test of "not better" at level (1 − c) / 2 (one_sided_alpha).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000


def one_sided_alpha(confidence: float) -> float:
    """The level a one-sided p-value is compared with: (1 − c) / 2 (0.95 → 0.025)."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return (1.0 - confidence) / 2


def _z(confidence: float) -> float:
    """The normal quantile of a two-sided confidence interval (0.95 → 1.96)."""
    return NormalDist().inv_cdf(1.0 - one_sided_alpha(confidence))


@dataclass(frozen=True)
class BootstrapResult:
    n: int
    mean: float  # the observed mean difference
    low: float  # the confidence interval of the mean (percentile interval)
    high: float
    p_value: float  # share of resampled means ≤ 0: the one-sided bootstrap p of "not better"

    def better(self) -> bool:
        return self.n > 0 and self.low > 0


def paired_bootstrap(
    differences, confidence: float, *, seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES
) -> BootstrapResult:
    """Paired bootstrap of the mean of per-example differences (candidate's advantage, > 0 = better).

    The examples are resampled with replacement, keeping each example's pair together, so what
    varies between two models on the same example (most of the noise: hard examples are hard for
    both) cancels. Seeded: the same numbers always give the same verdict. The interval is the
    percentile interval [q(α), q(1 − α)] of the resampled means, α = (1 − c) / 2.
    """
    values = np.asarray(list(differences), dtype=np.float64)
    n = len(values)
    if n == 0:
        return BootstrapResult(0, 0.0, 0.0, 0.0, 1.0)
    alpha = one_sided_alpha(confidence)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    # In blocks, so 10k resamples of tens of thousands of examples stay within a few MB.
    block = max(1, 2_000_000 // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return BootstrapResult(
        n=n,
        mean=float(values.mean()),
        low=float(np.quantile(means, alpha)),
        high=float(np.quantile(means, 1.0 - alpha)),
        p_value=float((means <= 0).mean()),
    )


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(X ≥ wins) for X ~ Binomial(wins + losses, 1/2).

    Ties (both right or both wrong on an example) carry no information about which is better and
    are left out, as in McNemar's exact test. 1.0 when there is nothing to compare.
    """
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def wilson_interval(successes: float, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval [low, high] of a proportion at `confidence` (two-sided).

    Better than the plain normal interval near 0 or 1 and for small n; `successes` may be a
    half-integer (ties split between the two sides).
    """
    if n <= 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class TwoProportions:
    rate_a: float
    rate_b: float
    difference: float  # rate_a − rate_b
    low: float  # confidence interval of the difference (unpooled normal interval)
    high: float
    z: float  # pooled two-proportion z statistic of the difference
    p_better: float  # one-sided p of "a is not better than b"
    p_worse: float  # one-sided p of "a is not worse than b"


def two_proportions(up_a: int, n_a: int, up_b: int, n_b: int, confidence: float) -> TwoProportions:
    """Two-proportion z-test of thumbs-up rates, a (the candidate) against b (the active version).

    The test statistic uses the pooled rate (the null hypothesis: both rates equal); the interval
    of the difference uses each side's own variance. Normal approximations, fine at the canary's
    minimum vote counts (tens per side and more).
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both sides need votes")
    _z(confidence)
    rate_a, rate_b = up_a / n_a, up_b / n_b
    difference = rate_a - rate_b
    pooled = (up_a + up_b) / (n_a + n_b)
    pooled_se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if pooled_se == 0:
        z = 0.0  # everybody up, or everybody down, on both sides: no difference to see
    else:
        z = difference / pooled_se
    se = math.sqrt(rate_a * (1 - rate_a) / n_a + rate_b * (1 - rate_b) / n_b)
    margin = _z(confidence) * se
    normal = NormalDist()
    return TwoProportions(
        rate_a=rate_a,
        rate_b=rate_b,
        difference=difference,
        low=difference - margin,
        high=difference + margin,
        z=z,
        p_better=1.0 - normal.cdf(z),
        p_worse=normal.cdf(z),
    )


def percent(value: float) -> str:
    """0.613 → '61 %' (the sentences round to whole percents)."""
    return f"{100 * value:.0f} %"


def percent_range(low: float, high: float) -> str:
    """(0.54, 0.68) → '54–68 %'."""
    return f"{100 * low:.0f}–{100 * high:.0f} %"
