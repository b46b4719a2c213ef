"""Models, compare and run pages in Chromium: actions confirm what they change (click or key),
buttons that cannot act are absent, the run page shows phases, steps, legends and a clear end."""

from __future__ import annotations

import pytest
from ui_helpers import DESKTOP, PHONE, build_world, log_in

from projects.selectors import default_project
from training.models import ModelVersion, TrainingRun

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


@pytest.fixture
def world(live_server):
    return build_world()


@pytest.fixture
def staff_page(world, live_server, open_page):
    page, errors = open_page(DESKTOP)
    log_in(page, live_server.url, "boss")
    page.errors = errors
    return page


def status_of(version) -> str:
    return ModelVersion.objects.get(pk=version.pk).status


def test_promote_asks_first_naming_the_change_then_esc_cancels_and_enter_confirms(world, staff_page, live_server):
    page, base, candidate = staff_page, world["base"], world["candidate"]
    page.goto(f"{live_server.url}/models/")
    # base is active and has nothing before it: no rollback button at all.
    assert page.locator("#rollback-button").count() == 0
    page.click(f"#version-{candidate.pk} .promote-button")
    assert page.is_visible("#confirm-dialog")
    assert page.inner_text("#confirm-text") == (
        "run-1 becomes the active model and base is retired. Inference switches to it at once."
    )
    page.keyboard.press("Escape")
    assert not page.is_visible("#confirm-dialog")
    assert status_of(candidate) == "candidate"
    page.click(f"#version-{candidate.pk} .promote-button")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert (status_of(candidate), status_of(base)) == ("active", "retired")
    assert page.inner_text("#active-version") == "run-1"
    # Now there is something to roll back to, and the button says what.
    assert page.inner_text("#rollback-button") == "Roll back to base"
    page.click("#rollback-button")
    assert "run-1 stops serving" in page.inner_text("#confirm-text")
    with page.expect_navigation():
        page.click("#confirm-ok")
    assert (status_of(candidate), status_of(base)) == ("retired", "active")
    assert not page.errors


def test_reject_asks_for_confirmation_and_keeps_the_reason(world, staff_page, live_server):
    page, candidate = staff_page, world["candidate"]
    page.goto(f"{live_server.url}/models/")
    assert page.locator(f"#version-{world['base'].pk} .reject-button").count() == 0  # the active one cannot be
    page.click(f"#version-{candidate.pk} .reject-button")
    assert "never be promoted" in page.inner_text("#confirm-text")
    page.fill("#confirm-reason", "worse on sums")
    with page.expect_navigation():
        page.click("#confirm-ok")
    candidate.refresh_from_db()
    assert (candidate.status, candidate.status_reason) == ("rejected", "worse on sums")
    assert page.locator(f"#version-{candidate.pk} .promote-button").count() == 0


def test_models_table_is_compact_with_human_labels(world, live_server, open_page):
    page, _ = open_page(DESKTOP)
    log_in(page, live_server.url, "boss", "/models/")
    headers = page.locator("#versions-table thead th").all_inner_texts()
    assert headers == ["Version", "Status", "Accuracy", "Holdout loss", "Reward accuracy", "Gate verdict", "Actions"]
    # At 1280 px the whole table fits its box: no sideways scrolling on a laptop.
    assert page.evaluate(
        "(t => t.scrollWidth <= t.parentElement.clientWidth)(document.getElementById('versions-table'))"
    )
    # The verdict is one line (details on demand), however long the gate's reason.
    line = page.locator(f"#version-{world['candidate'].pk} .verdict .line")
    assert line.evaluate("el => el.getBoundingClientRect().height") < 30
    assert not page.is_visible(f"#version-{world['candidate'].pk} .verdict pre")


def test_compare_view_aligns_outputs_and_highlights_deltas(world, live_server, open_page):
    page, errors = open_page(PHONE)
    log_in(page, live_server.url, "boss", "/models/")
    with page.expect_navigation():
        page.click(f"#version-{world['candidate'].pk} .compare-button")
    verdicts = dict(
        zip(
            page.locator("#compare-metrics tbody tr[data-metric]").evaluate_all(
                "rows => rows.map(r => r.dataset.metric)"
            ),
            page.locator("#compare-metrics td[data-verdict]").evaluate_all(
                "cells => cells.map(c => c.dataset.verdict)"
            ),
        )
    )
    # B (run-1) vs A (base): accuracy down, loss down (better), reward accuracy up.
    assert verdicts["demo_accuracy"] == "worse" and verdicts["holdout.loss"] == "better"
    assert verdicts["holdout.reward_accuracy"] == "better"
    assert page.locator("#compare-metrics .delta-worse").count() == 1
    # First the same held-out prompts (the gate's greedy outputs), a differing answer shaded.
    heldout = page.locator("#compare-heldout .compare-item")
    assert heldout.count() == 3
    assert heldout.nth(0).locator(".compare-row .text").all_inner_texts() == ["56", "46"]  # 41+5
    assert heldout.evaluate_all("items => items.map(i => i.dataset.differs)") == ["true", "false", "false"]
    assert page.locator("#compare-heldout .differs .output").first.evaluate(
        "e => getComputedStyle(e).backgroundColor"
    ) != page.locator("#compare-heldout .compare-item:not(.differs) .output").first.evaluate(
        "e => getComputedStyle(e).backgroundColor"
    )
    # Then the outputs both served.
    items = page.locator("#compare-outputs .compare-item")
    assert items.count() == 3
    first = items.nth(0).locator(".compare-row .text").all_inner_texts()
    assert first == ["29", "19"]  # 12+7: base's slip and the candidate's right answer, side by side
    # Picking the other order swaps the columns.
    page.select_option("#pick-a", str(world["candidate"].pk))
    page.select_option("#pick-b", str(world["base"].pk))
    with page.expect_navigation():
        page.click("#compare-submit")
    assert page.locator("#compare-heldout .compare-item").nth(0).locator(".compare-row .text").all_inner_texts() == [
        "46",
        "56",
    ]
    assert page.locator("#compare-outputs .compare-item").nth(0).locator(".compare-row .text").all_inner_texts() == [
        "19",
        "29",
    ]
    assert not errors


def test_cancel_asks_first_and_the_run_then_says_it_was_cancelled(world, staff_page, live_server):
    page, run = staff_page, world["runs"]["running"]
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    page.click("#run-cancel-button")
    assert "produces no model version" in page.inner_text("#confirm-text")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert TrainingRun.objects.get(pk=run.pk).status == "cancelled"
    page.wait_for_selector("#run-end:not([hidden])")
    assert page.inner_text("#run-end-title") == "Cancelled"
    assert page.inner_text("#run-end-text") == "Cancelled by an admin; no model version was produced."
    assert "Finished. Version produced" not in page.content()
    assert not page.is_visible("#run-cancel")


def test_run_page_shows_the_phase_the_steps_and_charts_with_legends(world, staff_page, live_server):
    page, run = staff_page, world["runs"]["running"]
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    page.wait_for_function("window.Chart && Chart.getChart('chart-reward')")
    assert page.get_attribute("#run-phase", "data-phase") == "training"
    assert page.inner_text("#run-phase-detail") == "step 6 of 12"
    assert page.get_attribute("#run-phases li.current", "data-phase") == "training"
    assert "step 6/12  loss 0.44  z0 0.06  r_D 0.3  r_U -0.24  acc 0.62  ex/s 46" in page.inner_text("#run-log")
    chart = "Chart.getChart('chart-reward')"
    assert page.evaluate(f"{chart}.data.datasets.map(d => d.label)") == ["desirable", "undesirable"]
    assert page.evaluate(f"{chart}.options.plugins.legend.display") is not False
    assert page.evaluate(f"{chart}.options.plugins.tooltip.enabled") is True
    assert page.evaluate(f"{chart}.options.scales.x.title.text") == "step"
    assert page.evaluate("Chart.getChart('chart-loss').data.datasets[0].data.length") == 6
    # A queued run is not stuck at "0 %": it says what it waits for and the clock runs.
    queued = TrainingRun.objects.create(
        project=default_project(),
        snapshot=world["snapshot"],
        config={"loss": "kto"},
        desirable_weight=1.0,
        undesirable_weight=1.0,
    )
    page.goto(f"{live_server.url}/runs/{queued.pk}/")
    assert page.inner_text("#run-phase-label") == "Waiting for a worker"
    page.wait_for_function("document.getElementById('run-elapsed').textContent.startsWith('queued for')")
    assert not page.errors


def test_failed_and_succeeded_runs_end_with_a_clear_state(world, staff_page, live_server):
    page = staff_page
    page.goto(f"{live_server.url}/runs/{world['runs']['failed'].pk}/")
    page.wait_for_selector("#run-end:not([hidden])")
    assert page.inner_text("#run-end-title") == "Failed"
    assert "CUDA out of memory" in page.inner_text("#run-error")
    page.goto(f"{live_server.url}/runs/{world['runs']['succeeded'].pk}/")
    page.wait_for_selector("[data-watching=done]", state="attached")
    assert page.inner_text("#run-end-title") == "Succeeded"
    assert page.inner_text("#run-end-text").startswith("Produced run-1 (candidate): not promoted")
    assert float(page.get_attribute("#run-progress", "data-value")) == 1.0


def test_a_second_click_on_start_run_while_the_first_is_under_way_sends_nothing(world, staff_page, live_server):
    page = staff_page
    page.goto(f"{live_server.url}/runs/new/")
    # Stand in for a slow server: a listener that runs after the page's own (window, bubbling)
    # counts each submit the page let through and keeps it from leaving, so the form is still on
    # screen for a person's second click, as it is while the first request is under way.
    page.evaluate(
        """() => {
            window.submitsSent = 0;
            window.addEventListener("submit", (event) => {
                if (!event.defaultPrevented) window.submitsSent += 1;
                event.preventDefault();
            });
        }"""
    )
    page.click("#retrain-submit")
    page.click("#retrain-submit")
    assert page.evaluate("window.submitsSent") == 1
    assert page.get_attribute("#retrain-form", "aria-busy") == "true"
    assert not page.errors, page.errors
