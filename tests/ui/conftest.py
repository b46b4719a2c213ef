"""Fixtures of the UI tests: one browser per session (tests/conftest.py), pages at a chosen size."""

from __future__ import annotations

import pytest
from ui_helpers import watch_console


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Snapshots of each test go to its own directory."""
    settings.DATA_DIR = tmp_path / "var"
    return settings.DATA_DIR


@pytest.fixture
def open_page(browser):
    """open_page(size, **context options) -> (page, console errors); contexts close after the test."""
    contexts = []

    def open_(viewport: dict, **options):
        context = browser.new_context(viewport=viewport, **options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        return page, watch_console(page)

    yield open_
    for context in contexts:
        context.close()
