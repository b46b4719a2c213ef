"""'Retrain now': the form's overrides reach start_run; bad values are named and nothing is queued."""
from __future__ import annotations

import pytest
from django.urls import reverse

from training.models import TrainingRun

pytestmark = pytest.mark.django_db


def test_overrides_are_passed_to_the_run(client, admin_user, active_demo_version, voted_demo_data, settings, tmp_path):
    settings.DATA_DIR = tmp_path  # the snapshot file of the run goes here
    client.force_login(admin_user)
    response = client.post(reverse("training:retrain"), {
        "beta": "0.3", "learning_rate": "0.0002", "num_train_epochs": "2", "max_steps": "5",
        "lora": "1", "loss": "concave", "lambda_mode": "manual",
        "desirable_weight": "1.5", "undesirable_weight": "1",
    })
    run = TrainingRun.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("training:run_detail", args=[run.pk])
    assert run.status == TrainingRun.Status.QUEUED
    assert run.requested_by == admin_user
    assert run.base_version == active_demo_version
    config = run.config
    assert (config["beta"], config["learning_rate"], config["num_train_epochs"], config["max_steps"]) == (0.3, 2e-4, 2.0, 5)
    assert (config["lora"], config["loss"], config["lambda_mode"]) == (True, "concave", "manual")
    assert (config["desirable_weight"], config["undesirable_weight"]) == (1.5, 1.0)
    # The snapshot cut for the run used the manual weights.
    assert (run.snapshot.desirable_weight, run.snapshot.undesirable_weight) == (1.5, 1.0)


def test_blank_fields_keep_the_defaults(client, admin_user, active_demo_version, voted_demo_data, settings, tmp_path):
    from training.policy import default_training_config

    settings.DATA_DIR = tmp_path
    client.force_login(admin_user)
    client.post(reverse("training:retrain"), {})
    run = TrainingRun.objects.get()
    defaults = default_training_config()
    for key in ("beta", "learning_rate", "num_train_epochs", "lora", "loss", "lambda_mode"):
        assert run.config[key] == defaults[key], key


@pytest.mark.parametrize("data, field", [
    ({"beta": "-1"}, "beta"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"max_steps": "0"}, "max_steps"),
    ({"loss": "magic"}, "loss"),
    ({"lambda_mode": "manual"}, "desirable_weight"),
])
def test_bad_values_are_named_and_nothing_is_queued(client, admin_user, active_demo_version, data, field):
    client.force_login(admin_user)
    response = client.post(reverse("training:retrain"), data)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert TrainingRun.objects.count() == 0


def test_a_refused_snapshot_is_shown_and_nothing_is_queued(client, admin_user, active_demo_version, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    client.force_login(admin_user)
    response = client.post(reverse("training:retrain"), {})  # no votes at all: no dataset to train on
    assert response.status_code == 200
    assert response.context["form"].non_field_errors()
    assert TrainingRun.objects.count() == 0
