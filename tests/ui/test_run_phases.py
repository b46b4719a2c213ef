"""The run page's phases, read off what the runner stores (the engine reports no phase itself)."""

from __future__ import annotations

from training.presentation import metric_deltas, run_phase


def progress(status, step=0, total=None, rows=0, log="", evaluation_state=None):
    return {
        "status": status,
        "step": step,
        "total_steps": total,
        "log_tail": log,
        "progress": 0.0,
        "metrics": {"step": list(range(1, rows + 1))},
        "version": {"evaluation_state": evaluation_state} if evaluation_state is not None else None,
    }


def test_phases_follow_the_run_and_the_bar_only_moves_forward():
    kto = {"loss": "kto"}
    seen = [
        run_phase(progress("queued"), kto),
        run_phase(progress("running"), kto),
        run_phase(progress("running", log="Loading weights"), kto),
        run_phase(progress("running", step=3, total=12, rows=3, log="x"), kto),
        run_phase(progress("running", step=12, total=12, rows=12, log="x"), kto),
        run_phase(progress("succeeded", step=12, total=12, rows=12, evaluation_state="running"), kto),
        run_phase(progress("succeeded", step=12, total=12, rows=12, evaluation_state="done"), kto),
    ]
    assert [p["key"] for p in seen] == [
        "queued",
        "preparing",
        "reference",
        "training",
        "training",
        "evaluating",
        "done",
    ]
    assert seen[3]["detail"] == "step 3 of 12" and seen[4]["detail"].endswith("saving the model")
    overall = [p["overall"] for p in seen]
    assert overall == sorted(overall) and overall[-1] == 1.0


def test_a_loss_without_a_reference_skips_the_reference_pass():
    assert run_phase(progress("running", log="Loading weights"), {"loss": "sft"})["key"] == "preparing"


def test_deltas_know_which_way_is_better():
    rows = {
        row.key: row
        for row in metric_deltas(
            {"holdout": {"loss": 0.5}, "demo_accuracy": 0.6}, {"holdout": {"loss": 0.4}, "demo_accuracy": 0.5}
        )
    }
    assert (rows["holdout.loss"].verdict, rows["holdout.loss"].delta) == ("better", "-0.1")
    assert (rows["demo_accuracy"].verdict, rows["demo_accuracy"].delta) == ("worse", "-10 pt")
