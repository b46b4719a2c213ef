"""Automatic class weights (λ_D, λ_U) for a binary KTO dataset — the paper's Eq. 7.

The paper's hyperparameter advice ("Loss Aversion", Eq. 7) is  λ_D·n_D / (λ_U·n_U) ∈ [1, 3/2];
its imbalance experiments used an effective desirable:undesirable ratio of 4:3 "regardless of
which group was in the minority", e.g. 1:10 data → λ_U = 1, λ_D = 13.33. For tasks where
avoiding the downside matters more (toxicity), it suggests λ_D·n_D < λ_U·n_U: "downside_first"
mirrors the rule around 1.

This is a pure function so the Django app (dataset snapshots) and the engine share it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import defaults

DEFAULT_TARGET_RATIO = defaults.TARGET_RATIO
# The paper's acceptable interval for the effective ratio λ_D n_D / (λ_U n_U) (Eq. 7).
ACCEPTED_LOW, ACCEPTED_HIGH = defaults.BALANCED_RATIO_BAND


@dataclass(frozen=True)
class ClassWeights:
    desirable_weight: float
    undesirable_weight: float
    rule: str  # human-readable: which rule produced the weights, shown to admins
    mode: str
    n_desirable: int
    n_undesirable: int
    target_ratio: float
    effective_ratio: float  # λ_D n_D / (λ_U n_U) after weighting

    def to_dict(self) -> dict:
        return asdict(self)


def balance_weights(
    n_desirable: int,
    n_undesirable: int,
    target_ratio: float = DEFAULT_TARGET_RATIO,
    mode: str = "auto",
    manual: tuple[float, float] | None = None,
) -> ClassWeights:
    """Choose λ_D, λ_U for ``n_desirable`` / ``n_undesirable`` examples.

    mode="auto": if n_D/n_U already lies in [1, 3/2] keep 1/1; otherwise the majority class keeps
      weight 1 and the minority is scaled so that λ_D n_D / (λ_U n_U) == target_ratio.
    mode="downside_first": the mirror image (effective ratio < 1 favours the undesirable side):
      keep 1/1 if n_D/n_U lies in [2/3, 1], else scale the minority to reach 1/target_ratio
      (3/4 for the default target), so λ_D n_D < λ_U n_U.
    manual=(λ_D, λ_U): use those weights as given (mode is then reported as "manual").
    Raises ValueError for a single-class dataset (no ratio to balance) or bad inputs.
    """
    if n_desirable < 0 or n_undesirable < 0:
        raise ValueError(f"counts must be non-negative, got n_desirable={n_desirable}, n_undesirable={n_undesirable}")
    if manual is not None:
        desirable_weight, undesirable_weight = (float(w) for w in manual)
        if desirable_weight <= 0 or undesirable_weight <= 0:
            raise ValueError(f"manual weights must be positive, got {manual}")
        effective = _effective_ratio(n_desirable, n_undesirable, desirable_weight, undesirable_weight)
        return ClassWeights(
            desirable_weight,
            undesirable_weight,
            "manual override",
            "manual",
            n_desirable,
            n_undesirable,
            float(target_ratio),
            effective,
        )
    if n_desirable == 0 or n_undesirable == 0:
        raise ValueError(
            f"cannot balance a single-class dataset (n_desirable={n_desirable}, n_undesirable={n_undesirable}): "
            "automatic weights need both desirable and undesirable examples; give the weights explicitly"
        )
    if not target_ratio > 0:
        raise ValueError(f"target_ratio must be positive, got {target_ratio}")
    if mode == "auto":
        low, high, target = ACCEPTED_LOW, ACCEPTED_HIGH, float(target_ratio)
    elif mode == "downside_first":
        # Mirror of Eq. 7 around 1: effective ratio in [2/3, 1], target 1/target_ratio.
        low, high, target = 1 / ACCEPTED_HIGH, 1 / ACCEPTED_LOW, 1 / float(target_ratio)
    else:
        raise ValueError(f"mode must be 'auto' or 'downside_first', got {mode!r}")

    ratio = n_desirable / n_undesirable
    if low <= ratio <= high:
        desirable_weight = undesirable_weight = 1.0
        rule = f"n_D/n_U = {ratio:.3f} already in [{low:.3f}, {high:.3f}]: kept λ_D = λ_U = 1"
    elif ratio < low:
        # Desirable side too light: scale it up, keep λ_U = 1.
        desirable_weight, undesirable_weight = target * n_undesirable / n_desirable, 1.0
        rule = f"n_D/n_U = {ratio:.3f} < {low:.3f}: λ_U = 1, λ_D = {target:.4g}·n_U/n_D = {desirable_weight:.4g}"
    else:
        # Undesirable side too light: scale it up, keep λ_D = 1.
        desirable_weight, undesirable_weight = 1.0, n_desirable / (target * n_undesirable)
        rule = f"n_D/n_U = {ratio:.3f} > {high:.3f}: λ_D = 1, λ_U = n_D/({target:.4g}·n_U) = {undesirable_weight:.4g}"
    effective = _effective_ratio(n_desirable, n_undesirable, desirable_weight, undesirable_weight)
    return ClassWeights(
        desirable_weight, undesirable_weight, rule, mode, n_desirable, n_undesirable, float(target_ratio), effective
    )


def _effective_ratio(n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float) -> float:
    if n_undesirable == 0:
        return float("inf")
    return desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
