"""Reads behind the Models page and its compare view (no writes: see training.registry and training.gate)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q

from training.models import ModelVersion

COMPARE_MAX_PROMPTS = 50


def rollback_target(active: ModelVersion | None) -> ModelVersion | None:
    """The version registry.rollback() would re-activate, or None when there is nothing to roll back to.

    Mirrors the service's rule (the version the active one replaced, else its parent; never a
    rejected one) so the page offers "Roll back" only when it can act.
    """
    if active is None:
        return None
    for candidate in (active.previous_active, active.parent):
        if candidate is not None and candidate.status != ModelVersion.Status.REJECTED:
            return candidate
    return None


@dataclass
class ComparedOutput:
    completion: str
    n_up: int
    n_down: int


@dataclass
class ComparedPrompt:
    prompt: object  # feedback.models.Prompt
    a: ComparedOutput
    b: ComparedOutput


def _latest_outputs(version: ModelVersion) -> dict[int, ComparedOutput]:
    """prompt id → the version's newest generation for it, with its thumbs."""
    outputs: dict[int, ComparedOutput] = {}
    rows = (
        version.generations.annotate(
            n_up=Count("votes", filter=Q(votes__desirable=True)),
            n_down=Count("votes", filter=Q(votes__desirable=False)),
        )
        .order_by("-created_at", "-id")
        .values_list("prompt_id", "completion", "n_up", "n_down")
    )
    for prompt_id, completion, n_up, n_down in rows:
        outputs.setdefault(prompt_id, ComparedOutput(completion, n_up, n_down))
    return outputs


def shared_prompt_outputs(a: ModelVersion, b: ModelVersion, limit: int = COMPARE_MAX_PROMPTS) -> list[ComparedPrompt]:
    """The prompts both versions answered (served outputs are stored as generations), outputs aligned."""
    from feedback.models import Prompt

    outputs_a, outputs_b = _latest_outputs(a), _latest_outputs(b)
    shared = sorted(set(outputs_a) & set(outputs_b))[:limit]
    prompts = Prompt.objects.in_bulk(shared)
    return [ComparedPrompt(prompts[pk], outputs_a[pk], outputs_b[pk]) for pk in shared]


@dataclass
class HeldoutPair:
    """Two versions' greedy outputs on one held-out prompt (stored by the gate)."""

    prompt: object  # a plain string or a list of chat messages
    a: str
    b: str

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)

    @property
    def differs(self) -> bool:
        return self.a.strip() != self.b.strip()


def heldout_output_pairs(a: ModelVersion, b: ModelVersion, limit: int = COMPARE_MAX_PROMPTS) -> list[HeldoutPair]:
    """The held-out prompts both versions have gate-generated outputs for, outputs aligned (A's order)."""
    outputs_b = dict(b.heldout_outputs.values_list("prompt_sha256", "completion"))
    pairs = []
    for sha, prompt, completion in a.heldout_outputs.order_by("id").values_list(
        "prompt_sha256", "prompt", "completion"
    ):
        if sha in outputs_b:
            pairs.append(HeldoutPair(prompt, completion, outputs_b[sha]))
            if len(pairs) == limit:
                break
    return pairs


def thumbs_up_share(version: ModelVersion) -> tuple[int, int]:
    """(thumbs up, all votes) on every output this version served."""
    counts = version.generations.aggregate(n=Count("votes"), up=Count("votes", filter=Q(votes__desirable=True)))
    return counts["up"] or 0, counts["n"] or 0
