"""The annotation pages over HTTP: forms, redirects, CSRF and the progress line.

The staff dashboard: counts, ratio, per-annotator agreement, votes over time, snapshot button.

In Chromium: an annotator logs in, rates three items with the keyboard only, and undoes one.

In Chromium: an annotator is refused (403) on the staff pages and shown no staff links.
"""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from feedback import selectors
from feedback.models import DatasetSnapshot, Job, Vote
from feedback.services import jobs, record_annotator_vote
from tests.feedback.helpers import PASSWORD, add_generation, add_labelled_examples, make_annotator

# --- annotate pages ----------------------------------------


@pytest.mark.django_db
def test_the_queue_page_shows_turns_shortcuts_and_progress(client, annotator):
    add_generation(
        prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour"}],
        completion="Teal",
    )
    client.force_login(annotator)
    page = client.get("/annotate/").content.decode()
    assert 'class="turn turn-system"' in page and "Be brief." in page and "Name a colour" in page
    assert "Teal" in page
    assert "0 rated today, 1 waiting" in page
    for key in ("<kbd>j</kbd>", "<kbd>k</kbd>", "<kbd>s</kbd>", "<kbd>u</kbd>"):
        assert key in page


@pytest.mark.django_db
def test_vote_skip_and_undo_forms(client, annotator):
    first, second = add_generation(completion="a"), add_generation(completion="b")
    client.force_login(annotator)
    client.get("/annotate/")
    response = client.post("/annotate/vote/", {"generation_id": first.pk, "label": "down", "comment": " too short "})
    assert response.status_code == 302 and response.url == "/annotate/"
    vote = Vote.objects.get()
    assert (vote.generation, vote.annotator, vote.desirable, vote.comment, vote.source) == (
        first,
        annotator,
        False,
        "too short",
        "ui",
    )
    assert "1 rated today, 1 waiting" in client.get("/annotate/").content.decode()
    client.post("/annotate/skip/", {"generation_id": second.pk})
    client.post("/annotate/undo/")
    assert Vote.objects.count() == 0
    assert f'data-generation-id="{first.pk}"' in client.get("/annotate/").content.decode()


@pytest.mark.django_db
def test_votes_need_a_csrf_token(annotator):
    generation = add_generation()
    client = Client(enforce_csrf_checks=True)
    client.force_login(annotator)
    response = client.post("/annotate/vote/", {"generation_id": generation.pk, "label": "up"})
    assert response.status_code == 403
    assert Vote.objects.count() == 0


@pytest.mark.django_db
def test_a_bad_vote_form_saves_nothing(client, annotator):
    generation = add_generation()
    client.force_login(annotator)
    client.post("/annotate/vote/", {"generation_id": generation.pk, "label": "sideways"})
    assert Vote.objects.count() == 0


@pytest.mark.django_db
def test_an_empty_queue_says_so(client, annotator):
    client.force_login(annotator)
    assert "Nothing is waiting" in client.get("/annotate/").content.decode()


# --- dashboard ----------------------------------------


@pytest.mark.django_db
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


@pytest.mark.django_db
def test_the_page_renders_the_figures_and_a_chart(client, staff_user):
    add_labelled_examples(6, 2)
    client.force_login(staff_user)
    page = client.get("/dashboard/").content.decode()
    assert '<strong id="n-votes">8</strong>' in page
    assert "3.00 : 1" in page
    # The chart's data (drawn by the vendored Chart.js): one bar per day of the last 14.
    chart = json.loads(
        re.search(r'<script id="votes-chart-data" type="application/json">(.*?)</script>', page).group(1)
    )
    assert len(chart["labels"]) == len(chart["values"]) == 14 and sum(chart["values"]) == 8
    assert 'id="create-snapshot"' in page


@pytest.mark.django_db
def test_the_snapshot_button_queues_a_job_whose_page_reports_the_weights(client, staff_user):
    add_labelled_examples(1, 10)
    client.force_login(staff_user)
    response = client.post("/dashboard/snapshot/", {"holdout": "0", "target_ratio": "1.3333333", "mode": "auto"})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/dashboard/jobs/{job.pk}/"
    assert (job.kind, job.status, DatasetSnapshot.objects.count()) == ("snapshot", "queued", 0)
    jobs.run_job(job.pk)  # what the worker does
    snapshot = DatasetSnapshot.objects.get()
    assert snapshot.desirable_weight == pytest.approx(13.333, abs=1e-3)
    page = client.get(response["Location"]).content.decode()
    assert 'id="job-result"' in page and "13.33" in page
    assert f'<a href="/dashboard/jobs/{job.pk}/">' in client.get("/dashboard/").content.decode()


@pytest.mark.django_db
def test_a_refused_snapshot_is_reported_on_its_job_page(client, staff_user):
    add_labelled_examples(3, 0)
    client.force_login(staff_user)
    response = client.post("/dashboard/snapshot/", {"holdout": "0", "target_ratio": "1.33", "mode": "auto"})
    jobs.run_job(Job.objects.get().pk)
    page = client.get(response["Location"]).content.decode()
    assert 'id="job-errors"' in page and "single-class dataset" in page
    assert not DatasetSnapshot.objects.exists()


# --- browser keyboard ----------------------------------------


def press(page, key: str) -> None:
    with page.expect_navigation():
        page.keyboard.press(key)
    shortcuts_ready(page)


def shortcuts_ready(page) -> None:
    # A key pressed before the page's script has run would do nothing: wait for it.
    page.wait_for_selector("body[data-shortcuts=ready]", state="attached")


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_rate_three_items_with_the_keyboard_then_undo_one(live_server, page):
    make_annotator("alice")
    items = [add_generation(prompt=f"What is {n}+{n}?", completion=str(2 * n)) for n in (1, 2, 3)]

    page.goto(f"{live_server.url}/annotate/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.press("#id_password", "Enter")
    page.wait_for_selector("#progress")
    shortcuts_ready(page)
    assert page.text_content("#progress") == "0 rated today, 3 waiting"

    # Only the keyboard from here on: j = thumbs up, k = thumbs down, u = undo.
    page.locator("body").focus()
    for key, item in zip("jkj", items):
        assert page.get_attribute("article.item", "data-generation-id") == str(item.pk)
        press(page, key)
    assert page.text_content("#progress") == "3 rated today, 0 waiting"
    press(page, "u")
    assert page.text_content("#progress") == "2 rated today, 1 waiting"
    # The undone item is back on screen for a new rating.
    assert page.get_attribute("article.item", "data-generation-id") == str(items[2].pk)

    votes = sorted(Vote.objects.values_list("generation_id", "desirable", "annotator__username"))
    assert votes == [(items[0].pk, True, "alice"), (items[1].pk, False, "alice")]


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_typing_a_comment_does_not_trigger_shortcuts(live_server, page):
    make_annotator("alice")
    item = add_generation()
    page.goto(f"{live_server.url}/accounts/login/?next=/annotate/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.press("#id_password", "Enter")
    page.wait_for_selector("#progress")
    shortcuts_ready(page)
    page.locator("body").focus()
    page.keyboard.press("c")
    page.keyboard.type("just ok")  # contains j and k: must stay text
    page.keyboard.press("Escape")
    press(page, "k")
    vote = Vote.objects.get()
    assert (vote.generation_id, vote.desirable, vote.comment) == (item.pk, False, "just ok")


# --- browser access ----------------------------------------


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_annotator_gets_403_on_admin_pages(live_server, page):
    make_annotator("alice")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.press("#id_password", "Enter")
    page.wait_for_url(f"{live_server.url}/annotate/")
    assert page.locator("nav a").all_text_contents() == ["Annotate"]

    for path in ("/dashboard/", "/runs/", "/models/", "/admin/", "/admin/feedback/vote/"):
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 403, path
        assert "403" in page.text_content("h1")
