"""Freezing the votes into an immutable KTO dataset snapshot with automatic λ_D / λ_U.

One example per (prompt, completion) with the majority label of its votes (ties dropped and
counted), split into train and holdout **by prompt**, written as a JSONL file whose sha256 is
stored with the row. The class weights come from the engine's `balance_weights` (the paper's
Eq. 7, SPEC §1), computed on the train split because that is what the trainer sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Q, Sum

from feedback.models import DatasetSnapshot, Generation, Vote
from projects.models import Project
from projects.selectors import resolve_project
from training.kto.balancing import balance_weights

SPLIT_TRAIN = "train"
SPLIT_HOLDOUT = "holdout"
# Rows fetched per round trip while streaming the aggregated votes.
STREAM_CHUNK_ROWS = 2000


class SnapshotRefused(ValueError):
    """The votes cannot make a trainable KTO dataset (none, one class only, empty train split)."""


def snapshot_dir() -> Path:
    path = Path(settings.DATA_DIR) / "snapshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prompt_split(prompt_sha: str, holdout: float, seed: int) -> str:
    """Holdout or train, decided by a hash of the prompt alone.

    The decision depends on nothing but (prompt, seed, holdout share), so a prompt held out in one
    snapshot stays held out in every later one: an evaluation set never leaks into a later
    training set as the data grows.
    """
    digest = hashlib.sha256(f"{seed}:{prompt_sha}".encode()).digest()
    return SPLIT_HOLDOUT if int.from_bytes(digest[:8], "big") / 2**64 < holdout else SPLIT_TRAIN


@dataclass
class _Tally:
    n_examples: dict = field(
        default_factory=lambda: {(s, d): 0 for s in (SPLIT_TRAIN, SPLIT_HOLDOUT) for d in (True, False)}
    )
    prompts: dict = field(default_factory=lambda: {SPLIT_TRAIN: 0, SPLIT_HOLDOUT: 0})
    n_votes: int = 0
    n_ties: int = 0


def _write_examples(
    out, project: Project, last_vote_id: int, holdout: float, seed: int, on_progress=None
) -> tuple[str, _Tally]:
    """Stream one JSON line per voted (prompt, completion) into `out`; return (sha256, counts)."""
    digest = hashlib.sha256()
    tally = _Tally()
    voted = Generation.objects.filter(project=project, votes__id__lte=last_vote_id)
    total = voted.values("id").distinct().count() if on_progress is not None else 0
    rows = (
        voted.annotate(
            desirable_votes=Sum("votes__weight", filter=Q(votes__desirable=True)),
            undesirable_votes=Sum("votes__weight", filter=Q(votes__desirable=False)),
            n_votes=Count("votes"),
        )
        .order_by("prompt_id", "id")
        .values_list(
            "id",
            "prompt_id",
            "prompt__content_sha256",
            "prompt__content",
            "completion",
            "desirable_votes",
            "undesirable_votes",
            "n_votes",
        )
        .iterator(chunk_size=STREAM_CHUNK_ROWS)
    )
    current_prompt_id, split = None, SPLIT_TRAIN
    for done, (
        generation_id,
        prompt_id,
        prompt_sha,
        prompt,
        completion,
        desirable_votes,
        undesirable_votes,
        n_votes,
    ) in enumerate(rows, 1):
        if on_progress is not None and done % STREAM_CHUNK_ROWS == 0:
            on_progress(done / max(total, 1))
        tally.n_votes += n_votes
        desirable_votes, undesirable_votes = desirable_votes or 0.0, undesirable_votes or 0.0
        if desirable_votes == undesirable_votes:
            tally.n_ties += 1  # the paper's Theorem 4: without a majority there is nothing to learn
            continue
        if prompt_id != current_prompt_id:
            current_prompt_id, split = prompt_id, prompt_split(prompt_sha, holdout, seed)
            tally.prompts[split] += 1
        label = desirable_votes > undesirable_votes
        tally.n_examples[(split, label)] += 1
        line = (
            json.dumps(
                {
                    "prompt": prompt,
                    "completion": completion,
                    "label": label,
                    "split": split,
                    "generation_id": generation_id,
                    "votes_desirable": desirable_votes,
                    "votes_undesirable": undesirable_votes,
                },
                ensure_ascii=False,
            ).encode("utf-8")
            + b"\n"
        )
        digest.update(line)
        out.write(line)
    return digest.hexdigest(), tally


def create_snapshot(
    *,
    holdout: float | None = None,
    target_ratio: float | None = None,
    mode: str = "auto",
    manual_weights: tuple[float, float] | None = None,
    seed: int = 0,
    project: Project | str | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> DatasetSnapshot:
    """Freeze the project's votes cast so far; raise SnapshotRefused (having written nothing) if untrainable.

    `on_progress(fraction)` is called now and then while the votes are read (the long part)."""
    project = resolve_project(project)
    holdout = settings.SNAPSHOT_HOLDOUT if holdout is None else holdout
    target_ratio = settings.KTO_TARGET_RATIO if target_ratio is None else target_ratio
    if not 0 <= holdout < 1:
        raise SnapshotRefused(f"holdout must be in [0, 1), got {holdout}")
    last_vote_id = Vote.objects.filter(generation__project=project).aggregate(last=Max("id"))["last"]
    if last_vote_id is None:
        raise SnapshotRefused("there are no votes yet: rate some outputs or import feedback first")

    directory = snapshot_dir()
    handle, tmp_path = tempfile.mkstemp(dir=directory, prefix=".snapshot-", suffix=".jsonl.tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            sha256, tally = _write_examples(out, project, last_vote_id, holdout, seed, on_progress)
        n_desirable, n_undesirable = tally.n_examples[(SPLIT_TRAIN, True)], tally.n_examples[(SPLIT_TRAIN, False)]
        if n_desirable + n_undesirable == 0:
            raise SnapshotRefused(
                f"the train split is empty ({tally.n_ties} tied items dropped, "
                f"{tally.prompts[SPLIT_HOLDOUT]} prompts held out): nothing to train on"
            )
        try:
            weights = balance_weights(
                n_desirable, n_undesirable, target_ratio=target_ratio, mode=mode, manual=manual_weights
            )
        except ValueError as exc:
            raise SnapshotRefused(f"refusing to build a KTO dataset: {exc}") from None

        with transaction.atomic():
            snapshot = DatasetSnapshot.objects.create(
                project=project,
                path="",
                sha256=sha256,
                n_desirable=n_desirable,
                n_undesirable=n_undesirable,
                n_train=n_desirable + n_undesirable,
                n_holdout=tally.n_examples[(SPLIT_HOLDOUT, True)] + tally.n_examples[(SPLIT_HOLDOUT, False)],
                n_ties_dropped=tally.n_ties,
                n_votes=tally.n_votes,
                desirable_weight=weights.desirable_weight,
                undesirable_weight=weights.undesirable_weight,
                weight_rule=weights.rule,
                params={
                    "holdout": holdout,
                    "seed": seed,
                    "mode": weights.mode,
                    "target_ratio": target_ratio,
                    "manual_weights": list(manual_weights) if manual_weights else None,
                    "effective_ratio": weights.effective_ratio,
                    "n_prompts_train": tally.prompts[SPLIT_TRAIN],
                    "n_prompts_holdout": tally.prompts[SPLIT_HOLDOUT],
                    "holdout_n_desirable": tally.n_examples[(SPLIT_HOLDOUT, True)],
                    "holdout_n_undesirable": tally.n_examples[(SPLIT_HOLDOUT, False)],
                },
                last_vote_id=last_vote_id,
            )
            final_path = directory / f"snapshot-{snapshot.pk:06d}-{sha256[:12]}.jsonl"
            # Snapshots are never overwritten: a leftover file at this name is an error, not a target.
            os.link(tmp_path, final_path)
            os.chmod(final_path, 0o444)
            snapshot.path = str(final_path)
            snapshot.save(update_fields=["path"])
        return snapshot
    finally:
        os.unlink(tmp_path)


@contextlib.contextmanager
def snapshot_files_removed_on_error():
    """Around a transaction that may cut a snapshot: yields a list to append each snapshot cut in
    it to. The snapshot's file is written (linked) before the transaction commits, so if the block
    raises (a refused follow-up, a failed commit), its row rolls back and this removes the file,
    which would otherwise stay on disk with no row. Enter it outside the transaction."""
    created: list[DatasetSnapshot] = []
    try:
        yield created
    except BaseException:
        for snapshot in created:
            if snapshot.path:
                Path(snapshot.path).unlink(missing_ok=True)
        raise


def snapshot_summary(snapshot: DatasetSnapshot) -> dict:
    """The one-line JSON that `snapshot_dataset` prints (SPEC §3)."""
    return {
        "id": snapshot.pk,
        "project": snapshot.project.name,
        "sha256": snapshot.sha256,
        "path": snapshot.path,
        "n_desirable": snapshot.n_desirable,
        "n_undesirable": snapshot.n_undesirable,
        "desirable_weight": snapshot.desirable_weight,
        "undesirable_weight": snapshot.undesirable_weight,
        "weight_rule": snapshot.weight_rule,
        "n_train": snapshot.n_train,
        "n_holdout": snapshot.n_holdout,
        "n_ties_dropped": snapshot.n_ties_dropped,
        "n_votes": snapshot.n_votes,
        "last_vote_id": snapshot.last_vote_id,
    }
