"""Blind pairwise comparisons: items from the gate's held-out outputs, served first on the annotate
page (blind, sides drawn at random), answered, undone and skipped; who may see and start them."""

from __future__ import annotations

import re

import pytest

from feedback import comparison_selectors
from feedback.models import Comparison, ComparisonItem, ComparisonVote, Vote
from feedback.services.comparisons import close_comparison, start_comparison
from projects.services import create_project
from tests.feedback.helpers import add_generation, add_heldout_outputs, add_version, answer, make_annotator

pytestmark = pytest.mark.django_db

PROMPTS = [f"What is {a}+{a % 10}?" for a in range(10, 16)]


@pytest.fixture
def versions():
    """base and cand: they differ on 4 of 6 held-out prompts (one only by surrounding spaces: alike)."""
    base, cand = add_version("base"), add_version("cand")
    add_heldout_outputs(base, {prompt: "10" for prompt in PROMPTS})
    add_heldout_outputs(cand, {PROMPTS[0]: "10", PROMPTS[1]: " 10\n", **{p: "99" for p in PROMPTS[2:]}})
    return base, cand


def shown_item(html: str) -> int | None:
    match = re.search(r'data-comparison-item-id="(\d+)"', html)
    return int(match.group(1)) if match else None


def test_one_item_per_prompt_where_the_outputs_differ_and_starting_again_adds_only_new_prompts(versions):
    base, cand = versions
    comparison = start_comparison(cand, base)
    assert comparison.items.count() == 4 and comparison.n_identical == 2
    assert (comparison.version_a, comparison.version_b) == (base, cand)  # stored in id order
    assert start_comparison(base, cand) == comparison and comparison.items.count() == 4  # either order: the same
    add_heldout_outputs(base, {"What is 7+1?": "8"})
    add_heldout_outputs(cand, {"What is 7+1?": "9"})
    start_comparison(cand, base)
    assert comparison.items.count() == 5 and Comparison.objects.count() == 1


def test_sides_are_drawn_at_random_and_stored_with_the_item():
    base, cand = add_version("base"), add_version("cand")
    prompts = [f"What is {a}+1?" for a in range(40)]
    add_heldout_outputs(base, {p: f"base {i}" for i, p in enumerate(prompts)})
    add_heldout_outputs(cand, {p: f"cand {i}" for i, p in enumerate(prompts)})
    comparison = start_comparison(cand, base)
    lefts = []
    for item in comparison.items.select_related("left_output", "right_output"):
        left, right = item.left_output, item.right_output
        assert {left.version_id, right.version_id} == {base.pk, cand.pk}
        assert left.prompt_sha256 == right.prompt_sha256 == item.prompt_sha256
        lefts.append(left.version_id)
    # 40 fair draws all landing on one side: probability 2^-39.
    assert lefts.count(base.pk) not in (0, 40)


def test_two_versions_of_different_projects_or_one_version_cannot_be_compared(versions):
    base, _ = versions
    other = add_version("other", project=create_project("shop"))
    with pytest.raises(ValueError, match="different projects"):
        start_comparison(base, other)
    with pytest.raises(ValueError, match="two different versions"):
        start_comparison(base, base)


def test_the_annotate_page_serves_the_gates_comparison_first_then_the_admins_then_outputs_to_rate(client, versions):
    base, cand = versions
    admin = make_annotator("padma", role="admin")
    other = add_version("other")
    add_heldout_outputs(other, {PROMPTS[2]: "11"})
    asked_by_admin = start_comparison(other, base, requested_by=admin)  # started first, but no promotion waits
    by_gate = start_comparison(cand, base)
    generation = add_generation(prompt="Say hi", completion="hi")
    annotator = make_annotator("alice")
    client.force_login(annotator)

    served = []
    for _ in range(6):
        html = client.get("/annotate/").content.decode()
        item_id = shown_item(html)
        if item_id is None:
            assert f'data-generation-id="{generation.pk}"' in html
            break
        # Blind: no version name, no version id anywhere on the page.
        for version in (base, cand, other):
            assert version.name not in html and f"/m/{version.name}" not in html
        assert 'id="pick-left"' in html and "<kbd>a</kbd>" in html and "<kbd>l</kbd>" in html
        served.append(ComparisonItem.objects.get(pk=item_id).comparison_id)
        response = client.post("/annotate/compare/", {"item_id": item_id, "choice": "tie"})
        assert response.status_code == 302 and response.url == "/annotate/"
    assert served == [by_gate.pk] * 4 + [asked_by_admin.pk]
    assert ComparisonVote.objects.filter(annotator=annotator).count() == 5


def test_answers_are_confirmed_a_repeat_changes_nothing_and_undo_and_skip_work(client, versions):
    base, cand = versions
    start_comparison(cand, base)
    annotator = make_annotator("alice")
    client.force_login(annotator)
    first = shown_item(client.get("/annotate/").content.decode())
    page = client.post("/annotate/compare/", {"item_id": first, "choice": "right"}, follow=True).content.decode()
    assert "Saved: right is better" in page and 'id="undo-saved"' in page
    second = shown_item(page)
    assert second not in (None, first)
    page = client.post("/annotate/compare/", {"item_id": first, "choice": "left"}, follow=True).content.decode()
    assert "your first answer stands" in page
    assert ComparisonVote.objects.get(item_id=first).choice == "right"

    page = client.post("/annotate/undo/", follow=True).content.decode()
    assert "Last answer undone" in page and shown_item(page) == first  # back on screen to choose again
    assert not ComparisonVote.objects.exists()

    page = client.post("/annotate/skip/", {"comparison_item_id": first}, follow=True).content.decode()
    assert "Skipped" in page and shown_item(page) not in (None, first)
    bad = client.post("/annotate/compare/", {"item_id": first, "choice": "both"}, follow=True).content.decode()
    assert "Answer not saved" in bad and not ComparisonVote.objects.exists()


def test_undo_takes_back_the_newest_answer_whichever_kind(client, versions):
    base, cand = versions
    comparison = start_comparison(cand, base)
    generation = add_generation(prompt="Say hi", completion="hi")
    annotator = make_annotator("alice")
    client.force_login(annotator)
    # Answer every comparison item, then rate the output.
    for _ in range(comparison.items.count()):
        item_id = shown_item(client.get("/annotate/").content.decode())
        client.post("/annotate/compare/", {"item_id": item_id, "choice": "left"})
    assert f'data-generation-id="{generation.pk}"' in client.get("/annotate/").content.decode()
    client.post("/annotate/vote/", {"generation_id": generation.pk, "label": "up"})
    client.post("/annotate/undo/")
    assert not Vote.objects.exists() and ComparisonVote.objects.count() == 4
    assert f'data-generation-id="{generation.pk}"' in client.get("/annotate/").content.decode()
    client.post("/annotate/vote/", {"generation_id": generation.pk, "label": "up"})
    assert shown_item(client.get("/annotate/").content.decode()) is None


def test_two_annotators_at_once_are_served_different_items_and_a_closed_comparison_none(
    client, versions, django_user_model
):
    from django.test import Client

    base, cand = versions
    comparison = start_comparison(cand, base)
    alice, bob = make_annotator("alice"), make_annotator("bob")
    other = Client()
    client.force_login(alice)
    other.force_login(bob)
    seen_by_alice = shown_item(client.get("/annotate/").content.decode())
    seen_by_bob = shown_item(other.get("/annotate/").content.decode())
    assert None not in (seen_by_alice, seen_by_bob) and seen_by_alice != seen_by_bob
    assert shown_item(client.get("/annotate/").content.decode()) == seen_by_alice  # a reload shows the same
    close_comparison(comparison)
    assert shown_item(client.get("/annotate/").content.decode()) is None


def test_the_tally_counts_items_once_splits_ties_and_reads_either_way(versions):
    base, cand = versions
    comparison = start_comparison(cand, base)
    items = list(comparison.items.select_related("left_output"))
    alice, bob = make_annotator("alice"), make_annotator("bob")
    answer(items[0], alice, cand)
    answer(items[1], alice, cand)
    answer(items[2], alice, "tie")
    answer(items[3], alice, base)
    answer(items[3], bob, cand)  # two answers on one item: it scores their mean, ½
    for_cand = comparison_selectors.tally(comparison, cand)
    assert (for_cand.score, for_cand.n_answered, for_cand.n_items, for_cand.n_identical) == (3.0, 4, 4, 2)
    assert (for_cand.wins, for_cand.losses, for_cand.ties, for_cand.n_votes) == (2, 0, 2, 5)
    assert for_cand.all_answered
    for_base = comparison_selectors.tally(comparison, base)
    assert (for_base.score, for_base.wins, for_base.losses) == (1.0, 0, 2)


# --- Who may see and start them -------------------------------------------------------------


def test_an_annotator_of_another_project_is_never_served_nor_may_answer_its_items(client, versions):
    base, cand = versions
    comparison = start_comparison(cand, base)
    item = comparison.items.first()
    outsider = make_annotator("oscar", project=create_project("shop"))
    client.force_login(outsider)
    html = client.get("/annotate/?project=shop").content.decode()
    assert shown_item(html) is None and "comparisons waiting" not in html
    page = client.post("/annotate/compare/", {"item_id": item.pk, "choice": "left"}, follow=True).content.decode()
    assert "no longer exists" in page and not ComparisonVote.objects.exists()
    # Nor through the default project: they have no role there.
    assert client.get("/annotate/?project=default").status_code in (403, 404)


def test_only_a_project_admin_starts_a_blind_comparison_and_only_of_their_projects_versions(client, versions):
    base, cand = versions
    client.force_login(make_annotator("alice"))
    assert client.post("/models/compare/blind/", {"a": base.pk, "b": cand.pk}).status_code == 403
    assert not Comparison.objects.exists()

    shop = create_project("shop")
    client.force_login(make_annotator("sam", project=shop, role="admin"))
    response = client.post("/models/compare/blind/?project=shop", {"a": base.pk, "b": cand.pk})
    assert response.status_code == 404 and not Comparison.objects.exists()

    admin = make_annotator("padma", role="admin")
    client.force_login(admin)
    response = client.post("/models/compare/blind/", {"a": base.pk, "b": cand.pk}, follow=True)
    page = response.content.decode()
    assert "4 items for annotators (2 prompts answered alike get no item)" in page
    comparison = Comparison.objects.get()
    assert comparison.requested_by == admin and comparison.items.count() == 4
    assert 'id="blind-result"' in page and "No answers yet." in page
