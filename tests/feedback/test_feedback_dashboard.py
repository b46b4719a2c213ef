"""The staff dashboard: counts, ratio, per-annotator agreement, votes over time, snapshot button."""
from __future__ import annotations

import json
import re

import pytest

from feedback import selectors
from feedback.models import DatasetSnapshot
from feedback.services import record_annotator_vote
from feedback_helpers import add_generation, add_labelled_examples, make_annotator

pytestmark = pytest.mark.django_db


def test_agreement_with_the_majority_on_multi_vote_items():
    alice, bob, carol = make_annotator("alice"), make_annotator("bob"), make_annotator("carol")
    agreed = add_generation(completion="agreed", votes_wanted=3)
    split = add_generation(completion="split", votes_wanted=3)
    single = add_generation(completion="single")
    for user, label in ((alice, True), (bob, True), (carol, True)):
        record_annotator_vote(user, agreed.pk, label)
    for user, label in ((alice, True), (bob, True), (carol, False)):
        record_annotator_vote(user, split.pk, label)
    record_annotator_vote(alice, single.pk, False)
    stats = selectors.dashboard_stats()
    assert (stats.n_prompts, stats.n_generations, stats.n_votes) == (1, 3, 7)
    assert (stats.n_desirable, stats.n_undesirable) == (5, 2)
    assert (stats.n_multi_vote_items, stats.n_unanimous_items) == (2, 1)
    by_name = {row.username: row for row in stats.annotators}
    assert (by_name["alice"].n_votes, by_name["alice"].n_compared, by_name["alice"].agreement) == (3, 2, 1.0)
    assert by_name["carol"].agreement == 0.5
    assert sum(n for _, n in stats.votes_per_day) == 7 and stats.votes_per_day[-1][1] == 7


def test_the_page_renders_the_figures_and_a_chart(client, staff_user):
    add_labelled_examples(6, 2)
    client.force_login(staff_user)
    page = client.get("/dashboard/").content.decode()
    assert '<strong id="n-votes">8</strong>' in page
    assert "3.00 : 1" in page
    # The chart's data (drawn by the vendored Chart.js): one bar per day of the last 14.
    chart = json.loads(re.search(r'<script id="votes-chart-data" type="application/json">(.*?)</script>', page).group(1))
    assert len(chart["labels"]) == len(chart["values"]) == 14 and sum(chart["values"]) == 8
    assert 'id="create-snapshot"' in page


def test_the_snapshot_button_creates_a_snapshot_and_reports_the_weights(client, staff_user):
    add_labelled_examples(1, 10)
    client.force_login(staff_user)
    response = client.post("/dashboard/snapshot/", {"holdout": "0", "target_ratio": "1.3333333", "mode": "auto"}, follow=True)
    snapshot = DatasetSnapshot.objects.get()
    assert snapshot.desirable_weight == pytest.approx(13.333, abs=1e-3)
    assert "λ_D = 13.33" in response.content.decode()


def test_a_refused_snapshot_is_reported_not_raised(client, staff_user):
    add_labelled_examples(3, 0)
    client.force_login(staff_user)
    response = client.post("/dashboard/snapshot/", {"holdout": "0", "target_ratio": "1.33", "mode": "auto"}, follow=True)
    assert response.status_code == 200
    assert "Snapshot refused" in response.content.decode()
    assert not DatasetSnapshot.objects.exists()
