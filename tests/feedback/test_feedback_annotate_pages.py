"""The annotation pages over HTTP: forms, redirects, CSRF and the progress line."""
from __future__ import annotations

import pytest
from django.test import Client

from feedback.models import Vote
from feedback_helpers import add_generation

pytestmark = pytest.mark.django_db


def test_the_queue_page_shows_turns_shortcuts_and_progress(client, annotator):
    add_generation(prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour"}],
                   completion="Teal")
    client.force_login(annotator)
    page = client.get("/annotate/").content.decode()
    assert 'class="turn turn-system"' in page and "Be brief." in page and "Name a colour" in page
    assert "Teal" in page
    assert "0 rated today, 1 waiting" in page
    for key in ("<kbd>j</kbd>", "<kbd>k</kbd>", "<kbd>s</kbd>", "<kbd>u</kbd>"):
        assert key in page


def test_vote_skip_and_undo_forms(client, annotator):
    first, second = add_generation(completion="a"), add_generation(completion="b")
    client.force_login(annotator)
    client.get("/annotate/")
    response = client.post("/annotate/vote/", {"generation_id": first.pk, "label": "down", "comment": " too short "})
    assert response.status_code == 302 and response.url == "/annotate/"
    vote = Vote.objects.get()
    assert (vote.generation, vote.annotator, vote.desirable, vote.comment, vote.source) == (first, annotator, False, "too short", "ui")
    assert "1 rated today, 1 waiting" in client.get("/annotate/").content.decode()
    client.post("/annotate/skip/", {"generation_id": second.pk})
    client.post("/annotate/undo/")
    assert Vote.objects.count() == 0
    assert f'data-generation-id="{first.pk}"' in client.get("/annotate/").content.decode()


def test_votes_need_a_csrf_token(annotator):
    generation = add_generation()
    client = Client(enforce_csrf_checks=True)
    client.force_login(annotator)
    response = client.post("/annotate/vote/", {"generation_id": generation.pk, "label": "up"})
    assert response.status_code == 403
    assert Vote.objects.count() == 0


def test_a_bad_vote_form_saves_nothing(client, annotator):
    generation = add_generation()
    client.force_login(annotator)
    client.post("/annotate/vote/", {"generation_id": generation.pk, "label": "sideways"})
    assert Vote.objects.count() == 0


def test_an_empty_queue_says_so(client, annotator):
    client.force_login(annotator)
    assert "Nothing is waiting" in client.get("/annotate/").content.decode()
