"""Fixtures shared by the whole suite: the demo model and the tokenizer-family fixture models (built once,
cached across sessions), and a browser."""
from __future__ import annotations

import os
import shutil

import pytest

# Playwright's sync API runs an event loop in the test thread; Django's ORM would otherwise refuse
# to run next to it. The tests are single-threaded, so this is safe here.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def demo_model_dir() -> str:
    """The offline demo model, built once and cached across sessions by the hash of its recipe."""
    from training.kto.testing import get_or_build_demo_model

    return get_or_build_demo_model()


@pytest.fixture(scope="session")
def bpe_model_dir() -> str:
    """Byte-level BPE tokenizer (GPT-2/Qwen style, ChatML template) + a tiny random Qwen2."""
    from training.kto.testing import get_or_build_fixture_model

    return get_or_build_fixture_model("bpe", "qwen2")


@pytest.fixture(scope="session")
def sentencepiece_model_dir() -> str:
    """SentencePiece-style tokenizer (Llama 2/Mistral style, BOS, [INST] template) + a tiny random Llama."""
    from training.kto.testing import get_or_build_fixture_model

    return get_or_build_fixture_model("sentencepiece", "llama")


@pytest.fixture(scope="session")
def browser(django_db_setup, django_db_blocker):
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (installs Debian's chromium)")
    from django.db import connections
    from playwright.sync_api import sync_playwright

    # Playwright's sync API switches the test thread into its own context, where Django's
    # connection handler (a context-local) hands out fresh connection objects. Those lack the copy
    # of the migrated data that serialized_rollback restores (the default project, the role
    # groups), so carry it over; the in-memory test database itself is shared.
    serialized = {conn.alias: conn._test_serialized_contents for conn in connections.all()
                  if hasattr(conn, "_test_serialized_contents")}
    with sync_playwright() as playwright:
        for alias, contents in serialized.items():
            connections[alias]._test_serialized_contents = contents
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()
