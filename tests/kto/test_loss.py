"""The loss module against TRL's KTOTrainer and the paper's Proposition 2."""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch

from training.kto import loss as kto_loss


def trl_kto_loss(policy, reference, kl_policy, kl_reference, labels, beta, desirable_weight, undesirable_weight):
    """TRL 1.x inlines the KTO loss in KTOTrainer._compute_loss; call that method itself with a
    minimal stand-in for `self` and a model stub whose per-token log-probs sum to the given
    per-sequence log-probs (one completion token per sequence), reference log-probs precomputed."""
    from trl.trainer.kto_trainer import KTOTrainer

    class Output:
        def __init__(self, logps):
            self.log_probs = logps.unsqueeze(1)
            self.entropy = torch.zeros_like(self.log_probs)
            self.mean_logits = torch.zeros_like(self.log_probs)

    class ModelStub:
        training = True

        def __call__(self, input_ids=None, **kwargs):
            # KL (mismatched) sequences are marked by token id 7 in the batch below.
            return Output(kl_policy if int(input_ids[0, 0]) == 7 else policy)

    class AcceleratorStub:
        device = torch.device("cpu")

        def gather_for_metrics(self, tensor):
            return tensor

    trainer = types.SimpleNamespace(
        model=ModelStub(),
        accelerator=AcceleratorStub(),
        aux_loss_enabled=False,
        calculate_KL=True,
        precompute_ref_logps=True,
        loss_type="kto",
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    trainer._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, trainer)
    n = len(labels)
    ones = torch.ones(n, 2, dtype=torch.long)
    batch = {
        "input_ids": ones,
        "attention_mask": ones,
        "completion_mask": ones,
        "KL_input_ids": torch.full((n, 2), 7),
        "KL_attention_mask": ones,
        "KL_completion_mask": ones,
        "label": labels,
        "ref_logps": reference,
        "ref_KL_logps": kl_reference,
    }
    loss = KTOTrainer._compute_loss(trainer, trainer.model, batch, False)
    return loss, trainer._metrics["train"]["kl"][-1]


@pytest.mark.parametrize("z0_sign", ["positive", "negative"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (13.33, 1.0), (1.0, 0.75)])
def test_loss_equals_trl_kto_loss(z0_sign, weights):
    generator = torch.Generator().manual_seed(len(z0_sign) + int(weights[0] * 100))
    n = 8
    policy = -20 + 5 * torch.randn(n, generator=generator, dtype=torch.float64)
    reference = policy + 2 * torch.randn(n, generator=generator, dtype=torch.float64)
    kl_reference = -30 + 5 * torch.randn(n, generator=generator, dtype=torch.float64)
    shift = 1.5 if z0_sign == "positive" else -1.5
    kl_policy = kl_reference + shift + 0.3 * torch.randn(n, generator=generator, dtype=torch.float64)
    labels = torch.tensor([True, False, True, True, False, False, True, False])
    beta = 0.1

    expected_loss, expected_z0 = trl_kto_loss(policy, reference, kl_policy, kl_reference, labels, beta, *weights)
    z0, z0_raw = kto_loss.reference_point(kl_policy, kl_reference)
    loss, _ = kto_loss.kto_loss(policy, reference, labels, z0, beta, *weights)

    assert (z0_raw > 0) == (z0_sign == "positive")  # both the clamped and the unclamped case are covered
    assert float(z0) == pytest.approx(expected_z0, abs=1e-6)
    assert float(loss) == pytest.approx(float(expected_loss), abs=1e-6)


def test_z0_is_clamped_at_zero_and_detached():
    mismatched_policy = torch.tensor([-10.0, -12.0], requires_grad=True)
    z0, z0_raw = kto_loss.reference_point(mismatched_policy, torch.tensor([-9.0, -9.0]))
    assert float(z0_raw) == pytest.approx(-2.0)
    assert float(z0) == 0.0
    assert not z0.requires_grad and not z0_raw.requires_grad


def test_loss_is_lambda_minus_value_by_hand():
    # One desirable (r = 2) and one undesirable (r = -1) example, z0 = 0.5, β = 0.5.
    policy, reference = torch.tensor([2.0, -1.0]), torch.zeros(2)
    labels = torch.tensor([True, False])
    loss, stats = kto_loss.kto_loss(policy, reference, labels, torch.tensor(0.5), 0.5, 2.0, 3.0)
    value_desirable = 2.0 * torch.sigmoid(torch.tensor(0.5 * (2.0 - 0.5)))
    value_undesirable = 3.0 * torch.sigmoid(torch.tensor(0.5 * (0.5 + 1.0)))
    assert float(loss) == pytest.approx(float(((2.0 - value_desirable) + (3.0 - value_undesirable)) / 2))
    assert float(stats["correct_count"]) == 2.0  # 2 > z0 for the desirable, -1 < z0 for the undesirable


@pytest.mark.parametrize("label", [True, False])
def test_proposition_2_gradient_vanishes_as_reward_magnitude_grows(label):
    """Paper Prop. 2: as |r| grows (either direction) the KTO gradient goes to 0."""
    gradients = []
    for magnitude in [0.0, 10.0, 50.0, 200.0, 1000.0]:
        row = []
        for sign in (1.0, -1.0):
            policy = torch.tensor([sign * magnitude], requires_grad=True)
            loss, _ = kto_loss.kto_loss(policy, torch.zeros(1), torch.tensor([label]), torch.tensor(0.0), 0.1)
            loss.backward()
            row.append(abs(float(policy.grad)))
        gradients.append(max(row))
    assert gradients[0] > 0.01  # at r = z0 the gradient is largest (β/4)
    assert all(later <= earlier for earlier, later in zip(gradients, gradients[1:]))
    assert gradients[-1] < 1e-12


def test_variants_differ_as_the_paper_describes():
    policy, reference = torch.tensor([-1.0, 3.0]), torch.zeros(2)
    labels, z0 = torch.tensor([True, False]), torch.tensor(0.0)
    kto, _ = kto_loss.kto_loss(policy, reference, labels, z0, 1.0, value="kto")
    concave, _ = kto_loss.kto_loss(policy, reference, labels, z0, 1.0, value="concave")
    neutral, _ = kto_loss.kto_loss(policy, reference, labels, z0, 1.0, value="risk_neutral")
    assert float(kto) == pytest.approx(
        1 - float(torch.sigmoid(torch.tensor(-1.0))) / 2 - float(torch.sigmoid(torch.tensor(-3.0))) / 2
    )
    assert float(concave) == pytest.approx(
        -(
            float(torch.nn.functional.logsigmoid(torch.tensor(-1.0)))
            + float(torch.nn.functional.logsigmoid(torch.tensor(-3.0)))
        )
        / 2
    )
    assert float(neutral) == pytest.approx(1 - (-1.0 - 3.0) / 2)
    with pytest.raises(ValueError):
        kto_loss.kto_loss(policy, reference, labels, z0, 1.0, value="nonsense")


def test_dpo_and_sft_baselines():
    loss, stats = kto_loss.dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5
    )
    assert float(loss) == pytest.approx(-float(torch.nn.functional.logsigmoid(torch.tensor(0.5 * 2.0))))
    assert float(stats["correct_count"]) == 2.0
    assert float(kto_loss.sft_loss(torch.tensor([-4.0, -2.0]), torch.tensor([2, 4]))) == pytest.approx(1.0)


def test_slic_by_hand():
    # Pair 1: margin 0.5 < δ = 1 → calibration 0.5; pair 2: margin 3 ≥ δ → 0. Regulariser −λ log π(y_w).
    chosen, rejected = torch.tensor([-2.0, -1.0]), torch.tensor([-2.5, -4.0])
    loss, stats = kto_loss.slic_loss(chosen, rejected, delta=1.0, regularization=0.1)
    assert float(loss) == pytest.approx(((0.5 + 0.1 * 2.0) + (0.0 + 0.1 * 1.0)) / 2)
    assert float(stats["correct_count"]) == 4.0  # both pairs ordered right, counted per example


def test_offline_ppo_by_hand():
    # Token 1: q = e^0.2 ≈ 1.22 < 1.5, A = +1 → −1.22. Token 2: q = e^1 ≈ 2.72, clipped to 1.5, A = +1 → −1.5.
    # Token 3: q = e^−1 ≈ 0.37, A = −1: min(−0.37, −clip(0.37) = −0.5) = −0.5 → +0.5 (clipping binds).
    policy = torch.tensor([0.2, 1.0, -1.0])
    reference = torch.zeros(3)
    advantages = torch.tensor([1.0, 1.0, -1.0])
    loss = kto_loss.ppo_offline_loss(policy, reference, advantages, epsilon=0.5)
    expected = -(math.exp(0.2) + 1.5 - 0.5) / 3
    assert float(loss) == pytest.approx(expected)
    # At the reference (q = 1) the gradient pushes desirable tokens up and undesirable ones down.
    at_reference = torch.zeros(2, requires_grad=True)
    kto_loss.ppo_offline_loss(at_reference, torch.zeros(2), torch.tensor([1.0, -1.0]), 0.5).backward()
    assert at_reference.grad[0] < 0 < at_reference.grad[1]


def test_every_variant_names_its_place_in_the_paper():
    for variant in kto_loss.VARIANTS.values():
        assert any(mark in variant.summary for mark in ("§", "Eq.", "Table")), variant.name
        assert variant.rows in ("all", "desirable", "pairs")
    assert not kto_loss.VARIANTS["reference_free"].needs_reference and kto_loss.VARIANTS["dpo"].paired
