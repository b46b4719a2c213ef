"""Exporting a snapshot in the format TRL's KTOTrainer (and `python -m training.kto train`) reads."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from feedback.models import DatasetSnapshot
from feedback.services.snapshots import SPLIT_HOLDOUT, SPLIT_TRAIN

SPLITS = (SPLIT_TRAIN, SPLIT_HOLDOUT, "all")
_BLOCK = 1 << 20


class SnapshotCorrupted(RuntimeError):
    pass


def verify_snapshot_file(snapshot: DatasetSnapshot) -> None:
    """Refuse to use a snapshot file that is missing or no longer matches its stored sha256."""
    path = Path(snapshot.path)
    if not path.is_file():
        raise SnapshotCorrupted(f"snapshot {snapshot.pk}: file {path} is missing")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    if digest.hexdigest() != snapshot.sha256:
        raise SnapshotCorrupted(
            f"snapshot {snapshot.pk}: {path} has sha256 {digest.hexdigest()}, expected {snapshot.sha256}; "
            "snapshots are immutable, so the file was changed outside Prospect"
        )


def trl_row(prompt, completion: str, label: bool) -> dict:
    """One row of TRL's unpaired preference format.

    A chat prompt (a list of messages) makes the row "conversational", where TRL expects the
    completion as a list of messages too: one assistant message. A plain prompt keeps plain text.
    """
    if isinstance(prompt, list):
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}], "label": label}
    return {"prompt": prompt, "completion": completion, "label": label}


def export_kto(snapshot: DatasetSnapshot, out_path: str | os.PathLike, split: str = SPLIT_TRAIN) -> int:
    """Write rows {"prompt", "completion", "label"} (label a JSON boolean); return the row count.

    Streams line by line from the snapshot file, so memory stays flat however large it is. The
    output appears only when complete (written to a temporary file, then renamed).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    verify_snapshot_file(snapshot)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    n_rows = 0
    try:
        with open(snapshot.path, "rb") as source, os.fdopen(handle, "wb", buffering=_BLOCK) as out:
            for line in source:
                row = json.loads(line)
                if split != "all" and row["split"] != split:
                    continue
                out.write(
                    json.dumps(trl_row(row["prompt"], row["completion"], row["label"]), ensure_ascii=False).encode(
                        "utf-8"
                    )
                    + b"\n"
                )
                n_rows += 1
        os.replace(tmp_path, out_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    return n_rows
