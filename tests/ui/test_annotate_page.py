"""The annotate page in Chromium: clear thumbs, a confirmation with undo, a comment never lost,
skip explained, conversations and code readable, and keyboard help only where there is a keyboard."""

from __future__ import annotations

import pytest
from ui_helpers import CHAT_PROMPT, DESKTOP, LONG_OUTPUT, PHONE, add_generation, log_in, make_user

from feedback.models import Vote

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def annotate_as_rater(open_page, live_server, viewport=DESKTOP, **options):
    make_user("rater", annotator=True)
    page, errors = open_page(viewport, **options)
    log_in(page, live_server.url, "rater", "/annotate/")
    page.wait_for_selector("body[data-shortcuts=ready]", state="attached")
    return page, errors


def message(page) -> str:
    return page.inner_text("#messages")


def test_votes_by_click_and_by_key_are_confirmed_and_can_be_undone(live_server, open_page):
    first, second = (
        add_generation(prompt="What is 1+1?", completion="2"),
        add_generation(prompt="What is 2+2?", completion="5"),
    )
    page, errors = annotate_as_rater(open_page, live_server)
    with page.expect_navigation():
        page.click("#vote-up")
    assert "Saved 👍" in message(page)
    page.locator("body").focus()
    with page.expect_navigation():
        page.keyboard.press("k")
    assert "Saved 👎" in message(page)
    assert sorted(Vote.objects.values_list("generation_id", "desirable")) == [(first.pk, True), (second.pk, False)]
    with page.expect_navigation():
        page.click("#undo-saved")  # the confirmation's own undo
    assert "undone" in message(page)
    assert list(Vote.objects.values_list("generation_id", flat=True)) == [first.pk]
    assert page.get_attribute("article.item", "data-generation-id") == str(second.pk)
    assert not errors


def test_thumbs_are_green_and_red_with_touch_sized_targets(live_server, open_page):
    add_generation()
    page, _ = annotate_as_rater(open_page, live_server, PHONE)
    style = "el => [getComputedStyle(el).backgroundColor, el.getBoundingClientRect().height]"
    up_color, up_height = page.eval_on_selector("#vote-up", style)
    down_color, down_height = page.eval_on_selector("#vote-down", style)
    assert (up_color, down_color) == ("rgb(21, 128, 61)", "rgb(185, 28, 28)")
    assert "👍" in page.inner_text("#vote-up") and "👎" in page.inner_text("#vote-down")
    assert min(up_height, down_height) >= 44
    assert page.eval_on_selector("#skip", "el => el.getBoundingClientRect().height") >= 44


def test_a_too_long_comment_keeps_the_text_and_the_counter_warns_before(live_server, open_page):
    item = add_generation()
    page, errors = annotate_as_rater(open_page, live_server)
    page.fill("#comment", "hello")
    assert page.inner_text("#comment-count") == "5 / 5000"
    # The box stops typing at the limit; a script or an old browser could still send more.
    too_long = "x" * 6000
    page.eval_on_selector(
        "#comment",
        "(el, text) => { el.removeAttribute('maxlength'); el.value = text; el.dispatchEvent(new Event('input')); }",
        too_long,
    )
    assert "limit reached" in page.inner_text("#comment-count")
    with page.expect_navigation():
        page.click("#vote-up")
    assert "6,000 characters and the limit is 5,000" in message(page)
    assert page.input_value("#comment") == too_long  # nothing typed is lost
    assert page.get_attribute("article.item", "data-generation-id") == str(item.pk)
    assert not Vote.objects.exists()
    page.fill("#comment", "too long, shortened")
    with page.expect_navigation():
        page.click("#vote-up")
    assert Vote.objects.get().comment == "too long, shortened"
    assert [e for e in errors if "status of" not in e] == []


def test_skip_says_why_waiting_does_not_drop(live_server, open_page):
    add_generation(prompt="a"), add_generation(prompt="b")
    page, _ = annotate_as_rater(open_page, live_server)
    assert page.inner_text("#progress") == "0 rated today, 2 waiting"
    assert "goes back to the queue" in page.inner_text("#skip-help")
    page.locator("body").focus()
    with page.expect_navigation():
        page.keyboard.press("s")
    assert "stays in the queue" in message(page) and "waiting" in message(page)
    assert page.inner_text("#progress") == "0 rated today, 2 waiting"


def test_a_chat_prompt_reads_as_a_conversation_and_code_is_monospaced(live_server, open_page):
    add_generation(prompt=CHAT_PROMPT, completion=LONG_OUTPUT)
    page, _ = annotate_as_rater(open_page, live_server, PHONE)
    roles = page.locator(".prompt .turn .role").all_inner_texts()
    assert [role.lower() for role in roles] == ["system", "user"]
    code = page.locator("#completion pre code")
    assert "def add(a, b):" in code.inner_text()
    assert "monospace" in code.evaluate("el => getComputedStyle(el).fontFamily")
    # The long unbroken name wraps inside the output instead of widening the page.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_keyboard_help_shows_only_where_there_is_a_keyboard(live_server, open_page):
    add_generation()
    desktop, _ = annotate_as_rater(open_page, live_server)
    assert desktop.is_visible(".shortcuts") and desktop.is_visible("#vote-up kbd")
    phone, _ = open_page(PHONE, has_touch=True, is_mobile=True)
    log_in(phone, live_server.url, "rater", "/annotate/")
    assert phone.is_visible("#vote-up")
    assert not phone.is_visible(".shortcuts") and not phone.is_visible("#vote-up kbd")
