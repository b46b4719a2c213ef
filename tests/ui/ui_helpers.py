"""Builders and page checks shared by the UI tests (Chromium through Playwright)."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from feedback.models import Vote
from feedback.services.generations import GenerationInput, create_generation
from projects.selectors import default_project, resolve_project
from projects.services import create_api_key, create_project, set_membership

PASSWORD = "correct horse battery staple"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}
SIZES = {"desktop": DESKTOP, "phone": PHONE}

LONG_OUTPUT = (
    "Here is a function that adds two numbers, and a very long identifier that must wrap: "
    + "a_really_long_name_without_any_spaces_" * 6
    + "\n\n```python\ndef add(a, b):\n    return a + b  # a code line long enough to need its own horizontal scroll box\n```\n"
    "That is all."
)
CHAT_PROMPT = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Write a Python function that adds two numbers."},
]


def make_user(username: str, *, staff: bool = False, annotator: bool = False):
    user = get_user_model().objects.create_user(username, password=PASSWORD, is_staff=staff, is_superuser=staff)
    if annotator:
        set_membership(resolve_project(None), user, "annotator")
    return user


def add_generation(prompt="What is 2+2?", completion="4", **kwargs):
    generation, _ = create_generation(GenerationInput(prompt=prompt, completion=completion, **kwargs))
    return generation


def add_votes(n_desirable: int, n_undesirable: int, prefix: str = "q") -> None:
    for index in range(n_desirable + n_undesirable):
        generation = add_generation(prompt=f"{prefix}{index}", completion=f"answer {index}")
        Vote.objects.create(generation=generation, external_user_id="rater", desirable=index < n_desirable)


def log_in(page, base_url: str, username: str, next_path: str = "/") -> None:
    page.goto(f"{base_url}/accounts/login/?next={next_path}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("#login-submit")


def watch_console(page) -> list[str]:
    """Collect console errors and uncaught exceptions of a page into the returned list."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    return errors


def horizontal_overflow(page) -> int:
    """Pixels by which the page is wider than the window (0 when it fits)."""
    return page.evaluate("Math.max(0, document.documentElement.scrollWidth - window.innerWidth)")


def build_world() -> dict:
    """Everything the pages show: users, items to rate, votes, a snapshot, versions, runs of every end."""
    from pathlib import Path

    from django.conf import settings
    from django.utils import timezone

    from feedback.content import prompt_sha256
    from feedback.services import create_snapshot
    from tests.training.helpers import loadable_artifact
    from training.models import HeldoutOutput, ModelVersion, TrainingRun

    demo = default_project()
    # Stand-ins that pass the promotion's artifact check (the pages never load them).
    base_dir = loadable_artifact(Path(settings.DATA_DIR) / "models" / "demo")
    candidate_dir = loadable_artifact(Path(settings.DATA_DIR) / "runs" / "1" / "final")
    make_user("rater", annotator=True)
    make_user("boss", staff=True)
    # A second team: the header's project switcher appears for users of both.
    shop = create_project("shop-assistant")
    project_admin = make_user("padma")
    for project in (demo, shop):
        set_membership(project, project_admin, "admin")
    create_api_key(
        demo,
        scopes="generations:write,votes:write,generate,read",
        name="customer support chat widget (production)",
        expires_days=90,
    )
    revoked, _ = create_api_key(demo, scopes="import", name="nightly import")
    revoked.revoked = True
    revoked.save(update_fields=["revoked"])
    add_generation(prompt=CHAT_PROMPT, completion=LONG_OUTPUT)
    add_votes(6, 2)
    snapshot = create_snapshot(holdout=0.0, target_ratio=4 / 3, mode="auto")
    base = ModelVersion.objects.create(
        project=demo,
        name="base",
        base_model=base_dir,
        artifact_path=base_dir,
        status=ModelVersion.Status.ACTIVE,
        status_reason="first version",
    )
    finished = TrainingRun.objects.create(
        project=demo,
        snapshot=snapshot,
        base_version=base,
        status=TrainingRun.Status.SUCCEEDED,
        progress=1.0,
        current_step=12,
        total_steps=12,
        config={"loss": "kto", "beta": 0.1},
        metrics=metric_rows(12),
        started_at=timezone.now(),
        finished_at=timezone.now(),
        **WEIGHTS,
    )
    candidate = ModelVersion.objects.create(
        project=demo,
        name="run-1",
        base_model=base_dir,
        artifact_path=candidate_dir,
        parent=base,
        created_by_run=finished,
        metrics={
            "demo_accuracy": 0.688,
            "holdout": {"loss": 0.4123, "reward_accuracy": 0.71, "reward_margin": 0.9},
            "gate": {
                "decision": "kept as candidate",
                "reason": "demo accuracy 0.688 vs 0.700 of base "
                "(gain -0.012, margin +0.010), a long verdict that must stay on one line in the table",
            },
        },
        status_reason="not promoted: demo accuracy 0.688 vs 0.700 of base",
    )
    ModelVersion.objects.filter(pk=base.pk).update(
        metrics={"demo_accuracy": 0.70, "holdout": {"loss": 0.4500, "reward_accuracy": 0.55}}
    )
    running = TrainingRun.objects.create(
        project=demo,
        snapshot=snapshot,
        base_version=base,
        status=TrainingRun.Status.RUNNING,
        progress=0.5,
        current_step=6,
        total_steps=12,
        config={"loss": "kto"},
        metrics=metric_rows(6),
        log_tail="Loading weights: 100%|██████| 24/24",
        started_at=timezone.now(),
        **WEIGHTS,
    )
    cancelled = TrainingRun.objects.create(
        project=demo,
        snapshot=snapshot,
        status=TrainingRun.Status.CANCELLED,
        error="cancelled by an admin",
        finished_at=timezone.now(),
        **WEIGHTS,
    )
    failed = TrainingRun.objects.create(
        project=demo,
        snapshot=snapshot,
        status=TrainingRun.Status.FAILED,
        exit_code=1,
        error="training exited with code 1:\nCUDA out of memory",
        finished_at=timezone.now(),
        **WEIGHTS,
    )
    # Outputs of both versions on the same prompts (the compare view aligns them), and items to rate.
    for a, b in ((12, 7), (30, 12), (8, 9)):
        prompt = f"What is {a}+{b}?"
        add_generation(prompt=prompt, completion=str(a + b + 10), model_version_id=base.pk, source="fill_queue")
        add_generation(prompt=prompt, completion=str(a + b), model_version_id=candidate.pk, source="fill_queue")
    # The gate's greedy outputs of both on the same held-out prompts (the compare view shows these first).
    for a, b, base_answer in ((41, 5, "56"), (6, 6, "12"), (23, 19, "42")):
        prompt = f"What is {a}+{b}?"
        for version, answer in ((base, base_answer), (candidate, str(a + b))):
            HeldoutOutput.objects.create(
                version=version, prompt=prompt, prompt_sha256=prompt_sha256(prompt), completion=answer
            )
    from feedback.models import Job

    # A snapshot job a worker has not picked up yet: its page polls the status URL.
    queued_job = Job.objects.create(project=demo, kind=Job.Kind.SNAPSHOT)
    return {
        "job": queued_job,
        "snapshot": snapshot,
        "base": base,
        "candidate": candidate,
        "runs": {"succeeded": finished, "running": running, "cancelled": cancelled, "failed": failed},
    }


# Every run records the λ it trains with (copied from its snapshot when it is started).
WEIGHTS = {"desirable_weight": 1.0, "undesirable_weight": 1.0}


def metric_rows(n: int) -> list[dict]:
    """Per-step rows shaped like the engine's metrics.jsonl."""
    return [
        {
            "step": step,
            "loss": 0.5 - 0.01 * step,
            "z0": 0.01 * step,
            "reward_desirable": 0.05 * step,
            "reward_undesirable": -0.04 * step,
            "reward_accuracy": 0.5 + 0.02 * step,
            "examples_per_s": 40.0 + step,
        }
        for step in range(1, n + 1)
    ]
