"""In Chromium: an annotator logs in, rates three items with the keyboard only, and undoes one."""
from __future__ import annotations

import pytest

from feedback.models import Vote
from feedback_helpers import PASSWORD, add_generation, make_annotator

# serialized_rollback: the flush after a live-server test must not wipe rows that migrations seed.
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def press(page, key: str) -> None:
    with page.expect_navigation():
        page.keyboard.press(key)
    shortcuts_ready(page)


def shortcuts_ready(page) -> None:
    # A key pressed before the page's script has run would do nothing: wait for it.
    page.wait_for_selector("body[data-shortcuts=ready]", state="attached")


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
