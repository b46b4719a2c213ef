"""Blind "which is better?" items in Chromium: answered with the keyboard (a / → / t, undo u), side by
side on a desktop and stacked on a phone, and started by a project admin from the compare page,
which then shows the running win rate."""

from __future__ import annotations

import pytest
from ui_helpers import DESKTOP, PHONE, horizontal_overflow, log_in, make_user

from feedback.models import Comparison, ComparisonVote
from feedback.services.comparisons import start_comparison
from projects.selectors import default_project
from projects.services import set_membership
from tests.feedback.helpers import add_heldout_outputs, add_version

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

SUMS = {"What is 41+5?": 46, "What is 23+9?": 32, "What is 6+6?": 12}


def two_versions():
    """The candidate answers every sum right, the base slips a carry (+10) on each."""
    base, cand = add_version("base"), add_version("run-1")
    add_heldout_outputs(base, {prompt: str(total + 10) for prompt, total in SUMS.items()})
    add_heldout_outputs(cand, {prompt: str(total) for prompt, total in SUMS.items()})
    return base, cand


def shown_item(page) -> str:
    return page.get_attribute("article.comparison", "data-comparison-item-id")


def press(page, key: str) -> None:
    page.locator("body").focus()
    with page.expect_navigation():
        page.keyboard.press(key)


def test_comparisons_are_answered_blind_with_the_keyboard_and_undone(live_server, open_page):
    base, cand = two_versions()
    comparison = start_comparison(cand, base)
    make_user("rater", annotator=True)
    page, errors = open_page(DESKTOP)
    log_in(page, live_server.url, "rater", "/annotate/")
    page.wait_for_selector("body[data-shortcuts=ready]", state="attached")
    assert "0 compared today, 3 comparisons waiting" in page.inner_text("#progress")
    # Blind: neither version's name anywhere on the page.
    assert "run-1" not in page.content() and "base" not in page.inner_text("main")
    left, right = page.locator("#output-left").bounding_box(), page.locator("#output-right").bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 2  # side by side
    assert "A (left) is better" in page.inner_text(".shortcuts")

    answered = []
    for key, choice in (("a", "left"), ("ArrowRight", "right"), ("t", "tie")):
        answered.append(shown_item(page))
        press(page, key)
        assert f"Saved: {dict(left='left is better', right='right is better', tie='a tie')[choice]}" in page.inner_text(
            "#messages"
        )
    assert sorted(ComparisonVote.objects.values_list("item_id", "choice")) == sorted(
        zip(map(int, answered), ["left", "right", "tie"])
    )
    assert page.is_visible("#queue-empty")
    press(page, "u")
    assert "Last answer undone" in page.inner_text("#messages") and shown_item(page) == answered[-1]
    assert not page.is_visible("#vote-form")  # j / k have no form to send on a comparison item
    press(page, "=")
    assert ComparisonVote.objects.get(item_id=answered[-1]).choice == "tie"
    assert ComparisonVote.objects.count() == 3 and comparison.items.count() == 3
    assert not errors


def test_an_admin_starts_a_comparison_an_annotator_answers_on_a_phone_and_the_win_rate_shows(live_server, open_page):
    base, cand = two_versions()
    padma = make_user("padma")
    set_membership(default_project(), padma, "admin")
    admin, admin_errors = open_page(DESKTOP)
    log_in(admin, live_server.url, "padma", f"/models/compare/?a={base.pk}&b={cand.pk}")
    assert "have not compared these two versions" in admin.inner_text("#blind-comparison")
    admin.click("#blind-start")
    with admin.expect_navigation():
        admin.click("#confirm-ok")  # the confirmation dialog names what will happen
    assert "3 items for annotators" in admin.inner_text("#messages")
    assert Comparison.objects.get().requested_by == padma

    make_user("rater", annotator=True)
    phone, errors = open_page(PHONE, has_touch=True, is_mobile=True)
    log_in(phone, live_server.url, "rater", "/annotate/")
    left, right = phone.locator("#output-left").bounding_box(), phone.locator("#output-right").bounding_box()
    assert right["y"] >= left["y"] + left["height"]  # stacked on a phone
    assert horizontal_overflow(phone) == 0 and not phone.is_visible(".shortcuts")
    for button in ("#pick-left", "#pick-tie", "#pick-right"):
        assert phone.locator(button).bounding_box()["height"] >= 44
    # The candidate's output is the right sum: tap whichever side shows it.
    for _ in range(3):
        expected = str(SUMS[phone.inner_text(".prompt .text").strip()])
        side = "left" if phone.inner_text("#output-left").strip() == expected else "right"
        with phone.expect_navigation():
            phone.tap(f"#pick-{side}")
    assert not errors

    admin.goto(f"{live_server.url}/models/compare/?a={base.pk}&b={cand.pk}")
    result = admin.inner_text("#blind-result")
    assert "B · run-1 wins 100 % of 3 blind comparisons, 95 % CI 44–100 %: no clear winner yet" in result
    assert "3 of 3 items answered" in admin.inner_text("#blind-progress")
    assert not admin_errors
