"""The upload page and the job page in Chromium: a file sent with "skip" queues a job; its page
polls the job's status URL, and when the worker is done it shows the result and the skipped lines
with their download link, without the user reloading anything."""

from __future__ import annotations

import json

import pytest
from ui_helpers import log_in, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_an_upload_with_skip_shows_its_job_finish_and_its_skipped_lines(live_server, open_page, loop_redis, tmp_path):
    from feedback.models import Job
    from feedback.services import jobs
    from projects.selectors import default_project
    from projects.services import set_membership

    set_membership(default_project(), make_user("padma"), "admin")
    rows = [{"prompt": f"q{i}", "completion": "a", "label": True} for i in range(3)] + [{"prompt": "q9"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")

    page, errors = open_page({"width": 1280, "height": 800})
    log_in(page, live_server.url, "padma")
    page.goto(f"{live_server.url}/dashboard/")
    page.click("#import-link")
    page.set_input_files("#id_file", str(path))
    page.check("input[name=on_invalid][value=skip]")
    with page.expect_navigation():
        page.click("#import-submit")
    page.wait_for_selector("#job-status")
    assert page.text_content("#job-status") == "queued"
    assert not page.is_visible("#job-result")

    job = Job.objects.get()
    jobs.run_job(job.pk)  # the worker's part; the page notices by itself
    page.wait_for_selector("#job-result")
    assert page.text_content("#job-status") == "succeeded"
    assert float(page.get_attribute("#job-progress", "value")) == 1.0
    assert "missing field 'completion'" in page.text_content("#skipped-lines")
    with page.expect_download() as download:
        page.click("#skipped-download")
    listed = [json.loads(line) for line in open(download.value.path()).read().splitlines()]
    assert listed == [{"line": 4, "field": "completion", "reason": "missing field 'completion'"}]
    assert not errors, errors
