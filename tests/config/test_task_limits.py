"""Every task has soft and hard time limits, and the broker's visibility timeout outlasts the
longest possible run (training, adapter merge and the four gate measurements)."""

from __future__ import annotations

from config.celery import app, broker_transport_options


def test_every_prospect_task_has_a_soft_and_a_hard_time_limit(settings):
    app.loader.import_default_modules()
    tasks = {name: task for name, task in app.tasks.items() if name.startswith("training.")}
    assert {
        "training.tasks.run_training",
        "training.tasks.evaluate_candidate",
        "training.tasks.maybe_retrain",
        "training.tasks.reap_orphaned_runs",
        "training.fill_queue",
    } <= set(tasks)
    for name, task in tasks.items():
        soft = task.soft_time_limit or app.conf.task_soft_time_limit
        hard = task.time_limit or app.conf.task_time_limit
        assert soft and hard and soft < hard, name


def test_the_visibility_timeout_outlasts_the_longest_run(settings):
    run_task = app.tasks["training.tasks.run_training"]
    longest_run = settings.PROSPECT_MAX_RUN_SECONDS + 5 * settings.PROSPECT_EVAL_TIMEOUT_SECONDS
    assert run_task.soft_time_limit > longest_run
    assert broker_transport_options()["visibility_timeout"] > run_task.time_limit
    for task in app.tasks.values():
        assert broker_transport_options()["visibility_timeout"] > (task.time_limit or app.conf.task_time_limit)
