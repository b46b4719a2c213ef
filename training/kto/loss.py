"""The KTO loss, its ablations and the paper's baselines — formulas only.

Every function takes per-example *sums* of completion-token log-probabilities (prompt tokens
masked out; offline PPO alone takes per-token values), so this module is independent of models
and batching. References are to the KTO paper (shared/paper/kto-paper.txt): KTO is §4.1, the
HALO comparison with SLiC, offline PPO and CSFT is §3.3 (details in Appendix C), the ablations
are Table 2.

    r_θ(x, y) = log π_θ(y|x) − log π_ref(y|x)                                   (implied reward)
    z0        = max(0, (1/m) Σ_i [log π_θ(y_j|x_i) − log π_ref(y_j|x_i)]),  j = (i+1) mod m
                (§4.1 "KL Estimate"; the estimator is unnumbered — Eq. 8 is the loss's gradient)
    v(x, y)   = λ_D σ(β (r_θ − z0))  if y desirable
                λ_U σ(β (z0 − r_θ))  if y undesirable
    L_KTO     = E[λ_y − v(x, y)]                                                          (Eq. 6)

z0 is detached ("we do not backpropagate through z0; it exists purely to control the loss
saturation"). Under data parallelism the sum and count of the mismatched log-ratios are
all-reduced before the mean and the clamp, so every process uses the same z0.

Rewards reported in metrics are r_θ itself (a log-ratio; TRL logs β·r_θ instead).

VARIANTS below is the one list of losses: the trainer, the CLI's choices, the training policy's
choices and the docs read it. Adding a loss = a formula here, a row in VARIANTS, and its branch
in trainer.microbatch_loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import defaults


@dataclass(frozen=True)
class LossVariant:
    name: str
    needs_reference: bool  # uses log π_ref (precomputed, a frozen copy, or the adapter disabled)
    needs_mismatched: bool  # z0 from the mismatched pairs (x_i, y_(i+1) mod m): a microbatch of ≥ 2
    rows: str  # which rows it trains on: "all" | "desirable" | "pairs" (chosen/rejected of one prompt)
    token_level: bool  # needs per-token log-probs (its reference is computed live, not cached)
    summary: str  # the formula in words and its place in the paper

    @property
    def paired(self) -> bool:
        return self.rows == "pairs"


VARIANTS: dict[str, LossVariant] = {
    variant.name: variant
    for variant in (
        LossVariant("kto", True, True, "all", False, "λ_y − v(x,y), v = λσ(±β(r − z0)); §4.1, Eq. 6"),
        LossVariant("no_z0", True, False, "all", False, "KTO with z0 = 0; Table 2 ablation"),
        LossVariant("concave", True, True, "all", False, "−λ_y log σ(±β(r − z0)) in place of 1 − σ; Table 2 ablation"),
        LossVariant("risk_neutral", True, True, "all", False, "identity value λ_y·β(±(r − z0)); Table 2 ablation"),
        LossVariant("reference_free", False, True, "all", False, 'π_ref uniform ("no π_ref"); Table 2 ablation'),
        LossVariant("sft", False, False, "desirable", False, "token-mean NLL of the desirable completions; §3.3"),
        LossVariant("dpo", True, False, "pairs", False, "−log σ(β(r_w − r_l)); Eq. 3, §3.3"),
        LossVariant(
            "slic",
            False,
            False,
            "pairs",
            False,
            "max(0, δ − log π_θ(y_w|x)/π_θ(y_l|x)) − λ_reg log π_θ(y_w|x); §3.3, Appendix C",
        ),
        LossVariant(
            "ppo_offline",
            True,
            False,
            "all",
            True,
            '−min(q A, clip(q, 1±ε) A) per token, q = π_θ/π_ref, A = ±1; §3.3 "PPO (offline)"',
        ),
        LossVariant(
            "csft",
            False,
            False,
            "all",
            False,
            "NLL after a <|good|>/<|bad|> control token; <|good|> at inference; §3.3, Appendix C",
        ),
    )
}
LOSS_TYPES = defaults.LOSS_TYPES
if tuple(VARIANTS) != LOSS_TYPES:  # the torch-free copy (for the web process) must name the same losses
    raise ImportError(f"training/kto/defaults.py LOSS_TYPES {LOSS_TYPES} != VARIANTS {tuple(VARIANTS)}")
# The losses built on KTO's value function (kto_loss below).
KTO_VALUES = ("kto", "no_z0", "concave", "risk_neutral", "reference_free")


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def reference_point(
    mismatched_policy_logps: torch.Tensor,
    mismatched_reference_logps: torch.Tensor,
    clamp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """z0 from the mismatched pairs (x_i, y_{(i+1) mod m}) of a microbatch (§4.1, "KL Estimate").

    Returns (z0, z0_raw): z0_raw is the mean log-ratio over all processes' mismatched pairs,
    z0 = max(0, z0_raw). Both are detached. ``clamp=False`` is for the reference-free variant,
    where the log-ratio lacks the constant that makes it a KL and its sign carries no meaning.
    """
    log_ratios = (mismatched_policy_logps - mismatched_reference_logps).detach().float()
    # Sum and count first, reduce across processes, then mean and clamp: the same z0 everywhere
    # and the same z0 as one process seeing the combined batch.
    sum_and_count = torch.stack([log_ratios.sum(), log_ratios.new_tensor(float(log_ratios.numel()))])
    total, count = _all_reduce_sum(sum_and_count).unbind(0)
    z0_raw = total / count
    z0 = z0_raw.clamp(min=0) if clamp else z0_raw
    return z0, z0_raw


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    is_desirable: torch.Tensor,
    z0: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    value: str = "kto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over the microbatch of λ_y − v(x, y) (§4.1, Eq. 6), and detached statistics.

    value="kto" | "no_z0" | "reference_free": the paper's value function above (no_z0 and
      reference_free differ only in the z0 / reference log-probs the caller passes in).
    value="concave": −log σ in place of 1 − σ, concave everywhere as in DPO (Table 2, "concave").
    value="risk_neutral": the identity value function, v = λ_y · β(±(r − z0)) (Table 2).
    """
    if value not in KTO_VALUES:
        raise ValueError(f"unknown KTO value function {value!r}; choose from {KTO_VALUES}")
    is_desirable = is_desirable.bool()
    rewards = policy_logps.float() - reference_logps.float()  # r_θ(x, y)
    z0 = z0.detach()
    # Signed distance from the reference point in the direction the label wants: +β(r − z0) for
    # desirable, +β(z0 − r) for undesirable outputs.
    sign = torch.where(is_desirable, 1.0, -1.0).to(rewards)
    gain = beta * sign * (rewards - z0)
    class_weight = torch.where(is_desirable, desirable_weight, undesirable_weight).to(rewards)  # λ_y

    if value == "concave":
        losses = -class_weight * F.logsigmoid(gain)
    elif value == "risk_neutral":
        losses = class_weight - class_weight * gain
    else:
        # λ_y − λ_y σ(gain): Prop. 2 — saturates, so the gradient vanishes as |r| grows.
        losses = class_weight - class_weight * torch.sigmoid(gain)
    return losses.mean(), reward_statistics(rewards.detach(), is_desirable, z0)


def reward_statistics(rewards: torch.Tensor, is_desirable: torch.Tensor, z0: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums and counts (not means) so they can be added over microbatches and processes.

    Reward accuracy counts desirable outputs with r > z0 and undesirable outputs with r < z0.
    """
    undesirable = ~is_desirable
    correct = torch.where(is_desirable, rewards > z0, rewards < z0)
    return {
        "desirable_reward_sum": rewards[is_desirable].sum(),
        "desirable_count": is_desirable.sum().float(),
        "undesirable_reward_sum": rewards[undesirable].sum(),
        "undesirable_count": undesirable.sum().float(),
        "correct_count": correct.sum().float(),
    }


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO baseline on preference pairs: −log σ(β (r_θ(x, y_w) − r_θ(x, y_l))) (paper Eq. 3)."""
    chosen_rewards = policy_chosen_logps.float() - reference_chosen_logps.float()
    rejected_rewards = policy_rejected_logps.float() - reference_rejected_logps.float()
    margins = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(beta * margins).mean()
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    stats = {
        "desirable_reward_sum": chosen_rewards.sum(),
        "desirable_count": chosen_rewards.new_tensor(float(chosen_rewards.numel())),
        "undesirable_reward_sum": rejected_rewards.sum(),
        "undesirable_count": rejected_rewards.new_tensor(float(rejected_rewards.numel())),
        # A pair is "correct" when the chosen output has the larger implied reward.
        "correct_count": (margins.detach() > 0).sum().float() * 2,
    }
    return loss, stats


def sft_loss(policy_logps: torch.Tensor, completion_token_counts: torch.Tensor) -> torch.Tensor:
    """SFT baseline: token-mean negative log-likelihood of the (desirable) completions (§3.3).
    CSFT uses it too, on every completion after its control token (Appendix C "CSFT")."""
    return -policy_logps.float().sum() / completion_token_counts.float().sum().clamp(min=1)


def slic_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    delta: float,
    regularization: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SLiC baseline on preference pairs (§3.3; Appendix C "SLiC"):

        L_cal = max(0, δ − log π_θ(y_w|x) / π_θ(y_l|x))
        L_reg = −log π_θ(y_w|x)      (the paper: cross-entropy on the SFT data — the chosen
                                      completions — instead of samples from π_ref, which is slow)
        L     = E[L_cal + λ_reg L_reg]

    No reference model. Rewards reported are the policy's log-probs (there is no log-ratio).
    """
    chosen, rejected = policy_chosen_logps.float(), policy_rejected_logps.float()
    calibration = torch.clamp(delta - (chosen - rejected), min=0)
    loss = (calibration - regularization * chosen).mean()
    margins = (chosen - rejected).detach()
    stats = {
        "desirable_reward_sum": chosen.detach().sum(),
        "desirable_count": chosen.new_tensor(float(chosen.numel())),
        "undesirable_reward_sum": rejected.detach().sum(),
        "undesirable_count": rejected.new_tensor(float(rejected.numel())),
        "correct_count": (margins > 0).sum().float() * 2,
    }
    return loss, stats


def ppo_offline_loss(
    policy_token_logps: torch.Tensor,
    reference_token_logps: torch.Tensor,
    token_advantages: torch.Tensor,
    epsilon: float,
) -> torch.Tensor:
    """The paper's "PPO (offline)" baseline (§3.3; proof of Theorem 1), per completion token t:

        q_t = π_θ(y_t | x:y_<t) / π_old(y_t | x:y_<t),   π_old = π_ref, never updated
        L   = −E_t[min(q_t A_t, clip(q_t, 1 − ε, 1 + ε) A_t)]

    with the paper's dummy rewards: A_t = +1 on every token of a desirable output, −1 on every
    token of an undesirable one (no critic: the sequence's reward is each token's advantage).
    The paper clips "less conservatively than we traditionally would" (ε = 0.5 in its code).
    Inputs are flat over the microbatch's completion tokens; the mean is over tokens.
    """
    ratio = torch.exp(policy_token_logps.float() - reference_token_logps.float())
    advantages = token_advantages.float()
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantages
    return -torch.minimum(unclipped, clipped).mean()
