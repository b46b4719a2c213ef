"""Fixtures of the projects tests: two product teams on one installation, each with its own key."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "var"
    return settings.DATA_DIR


@pytest.fixture(autouse=True)
def forget_throttles_and_last_used():
    from django.core.cache import cache

    from projects.authentication import forget_last_used, forget_verified_keys

    cache.clear()
    forget_last_used(), forget_verified_keys()
    yield
    forget_last_used(), forget_verified_keys()
    cache.clear()
