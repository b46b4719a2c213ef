"""The web process's settings: defaults that work on a laptop, and a clear refusal of a bad value
(naming the variable) instead of a server that starts with zero threads."""

from __future__ import annotations

import os

import pytest

from config import web_server


def test_defaults_are_one_worker_per_core_and_two_threads(monkeypatch):
    for name in ("WEB_HOST", "PORT", "WEB_CONCURRENCY", "WEB_THREADS"):
        monkeypatch.delenv(name, raising=False)
    args = web_server.parse_args([])
    assert (args.host, args.port, args.workers, args.threads) == ("127.0.0.1", 8000, os.cpu_count() or 1, 2)


def test_the_environment_sets_them_and_flags_win(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("WEB_THREADS", "4")
    monkeypatch.setenv("PORT", "9000")
    assert (web_server.parse_args([]).workers, web_server.parse_args([]).threads) == (3, 4)
    assert web_server.parse_args(["--threads", "1", "--port", "9001"]).threads == 1
    assert web_server.parse_args([]).port == 9000


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_value_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("WEB_THREADS", value)
    with pytest.raises(SystemExit, match="WEB_THREADS"):
        web_server.parse_args([])


def test_a_zero_flag_is_refused_too():
    with pytest.raises(SystemExit):
        web_server.parse_args(["--workers", "0"])


def test_the_metrics_folder_is_emptied_at_start(monkeypatch, tmp_path):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "histogram_123.db").write_bytes(b"counts of a previous start")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    web_server.reset_metrics_folder()
    assert folder.is_dir() and list(folder.iterdir()) == []
