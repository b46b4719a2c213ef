"""config/settings.py: importing it has no side effects, and the README's table is what it reads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import config.settings  # noqa: F401  (reading the settings declares every variable)
from config.env import DECLARED, configuration_table
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]


def test_importing_the_settings_creates_nothing_and_connects_nowhere(tmp_path):
    data_dir = tmp_path / "not-yet"
    port = free_port()
    with socket.socket() as listener:  # a "Redis" that records whether anyone knocked
        listener.bind(("127.0.0.1", port))
        listener.listen()
        listener.settimeout(0)
        env = {key: value for key, value in os.environ.items() if key not in ("CELERY_BROKER_URL", "DATABASE_URL")}
        env.update(PROSPECT_DATA_DIR=str(data_dir), REDIS_URL=f"redis://127.0.0.1:{port}/0")
        imported = subprocess.run(
            [sys.executable, "-c", "import config.settings, config.celery"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        try:
            listener.accept()
            knocked = True
        except BlockingIOError:
            knocked = False
    assert not knocked, "importing the settings connected to the broker"
    assert not data_dir.exists(), "importing the settings created PROSPECT_DATA_DIR"


def test_the_readme_configuration_table_is_generated_from_the_settings():
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- config-table:start -->\n", "<!-- config-table:end -->"
    table = readme[readme.index(start) + len(start) : readme.index(end)]
    assert table == configuration_table(), "run `python scripts/config_table.py` and paste it into README.md"


def test_every_prospect_setting_is_declared_once_with_a_meaning():
    source = (REPO / "config" / "settings.py").read_text()
    for name, variable in DECLARED.items():
        assert variable.meaning, f"{name} needs a meaning for the README"
        assert source.count(f'"{name}"') == 1, f"{name} is read more than once in config/settings.py"
