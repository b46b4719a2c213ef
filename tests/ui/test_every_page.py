"""Every page, as each role, at 1280×800 and 375×812: it fits the window and logs no console error.

One test walks them all so the suite shares one live server, one browser and one set of data.
With PROSPECT_UI_SCREENSHOTS=DIR it also saves the README's screenshots there
(`PROSPECT_UI_SCREENSHOTS=docs/screenshots pytest tests/ui/test_every_page.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ui_helpers import SIZES, build_world, horizontal_overflow, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


# Pages (by the selector they must show) that fetch from the server after loading: a run's and a
# job's status polls, and the API docs' schema.
FETCHING_PAGES = {"#run-phase", "#job-progress", "#swagger-ui"}


def pages_for(world) -> dict[str, list[tuple[str, int, str]]]:
    """role → [(path, expected status, a selector the page must show)]."""
    runs = world["runs"]
    staff_pages = [
        ("/dashboard/", 200, "#votes-chart"),
        ("/runs/", 200, "#runs-table"),
        ("/dashboard/import/", 200, "#import-form"),
        (f"/dashboard/jobs/{world['job'].pk}/", 200, "#job-progress"),
        ("/runs/new/", 200, "#retrain-form"),
        *[(f"/runs/{run.pk}/", 200, "#run-phase") for run in runs.values()],
        ("/models/", 200, "#versions-table"),
        (f"/models/compare/?a={world['base'].pk}&b={world['candidate'].pk}", 200, "#compare-outputs"),
        ("/keys/", 200, "#keys-table"),
    ]
    return {
        "anonymous": [
            ("/accounts/login/", 200, "#login-form"),
            ("/annotate/", 200, "#login-form"),
            ("/models/", 200, "#login-form"),
            ("/api/docs/", 200, "#swagger-ui"),
        ],
        "annotator": [("/annotate/", 200, "#vote-form")] + [(path, 403, "h1") for path, _, _ in staff_pages[:2]],
        "staff": [
            ("/annotate/", 200, "#vote-form"),
            *staff_pages,
            ("/admin/", 200, "#content"),
            ("/admin/feedback/importbatch/", 200, "#content"),
            ("/admin/projects/apiclient/", 200, "#content"),
            ("/api/docs/", 200, "#swagger-ui"),
        ],
        # A project admin of two projects (no staff flag): the switcher in the header, no Django admin.
        "project_admin": [
            ("/dashboard/", 200, "#project-switcher"),
            ("/keys/", 200, "#keys-table"),
            ("/members/", 200, "#members-table"),
            ("/models/", 200, "#versions-table"),
            ("/admin/", 403, "h1"),
        ],
    }


def test_every_page_fits_both_sizes_without_console_errors(live_server, open_page):
    world = build_world()
    problems = []
    for size_name, viewport in SIZES.items():
        for role, pages in pages_for(world).items():
            page, errors = open_page(viewport)
            if role != "anonymous":
                log_in(page, live_server.url, {"annotator": "rater", "staff": "boss", "project_admin": "padma"}[role])
            for path, status, selector in pages:
                errors.clear()
                response = page.goto(live_server.url + path)
                page.wait_for_selector(selector)
                if selector in FETCHING_PAGES:
                    # What they fetch is part of the page: its errors count. Every other page is
                    # complete at "load" (goto waits for it), and networkidle's extra 500 ms quiet
                    # window on each of ~60 loads was a third of this test.
                    page.wait_for_load_state("networkidle")
                where = f"{role} {size_name} {path}"
                if response.status != status:
                    problems.append(f"{where}: HTTP {response.status}, expected {status}")
                if overflow := horizontal_overflow(page):
                    problems.append(f"{where}: {overflow}px wider than the window")
                # A 403 page is itself reported by Chromium as a failed resource; nothing else may be.
                unexpected = [e for e in errors if not (status == 403 and "status of 403" in e)]
                if unexpected:
                    problems.append(f"{where}: console errors {unexpected}")
                if role == ("annotator" if path == "/annotate/" else "staff"):
                    save_screenshot(page, path, size_name, world)
    assert not problems, "\n".join(problems)


def save_screenshot(page, path: str, size_name: str, world) -> None:
    out = os.environ.get("PROSPECT_UI_SCREENSHOTS")
    names = {
        "/annotate/": "annotate",
        f"/runs/{world['runs']['running'].pk}/": "run-live",
        f"/models/compare/?a={world['base'].pk}&b={world['candidate'].pk}": "models-compare",
    }
    if out and path in names:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(300)  # let the charts finish their first draw
        page.screenshot(path=str(Path(out) / f"{names[path]}-{size_name}.png"), full_page=True)
