"""The KTO loss, its ablations and the SFT/DPO baselines — formulas only.

Every function takes per-example *sums* of completion-token log-probabilities (prompt tokens
masked out), so this module is independent of models and batching. References are to the KTO
paper (shared/paper/kto-paper.txt, §3 "Kahneman-Tversky Optimization" and §4.4 ablations):

    r_θ(x, y) = log π_θ(y|x) − log π_ref(y|x)                                   (implied reward)
    z0        = max(0, mean_i [log π_θ(y_j|x_i) − log π_ref(y_j|x_i)]),  j = (i+1) mod m   (Eq. 8)
    v(x, y)   = λ_D σ(β (r_θ − z0))  if y desirable
                λ_U σ(β (z0 − r_θ))  if y undesirable
    L_KTO     = E[λ_y − v(x, y)]                                                          (Eq. 6)

z0 is detached ("we do not backpropagate through z0; it exists purely to control the loss
saturation"). Under data parallelism the sum and count of the mismatched log-ratios are
all-reduced before the mean and the clamp, so every process uses the same z0.

Rewards reported in metrics are r_θ itself (a log-ratio; TRL logs β·r_θ instead).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

KTO_VALUES = ("kto", "no_z0", "concave", "risk_neutral", "reference_free")
LOSS_TYPES = KTO_VALUES + ("sft", "dpo")


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
    """z0 from the mismatched pairs (x_i, y_{(i+1) mod m}) of a microbatch (paper Eq. 8).

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
    """Mean over the microbatch of λ_y − v(x, y) (paper Eq. 6), and detached statistics.

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
    """SFT baseline: token-mean negative log-likelihood of the (desirable) completions."""
    return -policy_logps.float().sum() / completion_token_counts.float().sum().clamp(min=1)
