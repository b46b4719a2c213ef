"""The shipped image and compose file: not root, no secret in the repository, not on every interface."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_image_runs_as_a_user_that_is_not_root_and_collects_static_files():
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert dockerfile.index("collectstatic") < dockerfile.rindex("USER")
    assert "DEBUG" not in dockerfile  # off by default: the image sets nothing that turns it on


def test_compose_takes_every_secret_from_the_environment_and_publishes_on_localhost_only():
    compose = (REPO / "docker-compose.yml").read_text()
    assert re.search(r"POSTGRES_PASSWORD:\s*\$\{POSTGRES_PASSWORD:\?", compose)
    assert re.search(r"SECRET_KEY:\s*\$\{SECRET_KEY:\?", compose)
    assert "prospect:prospect@" not in compose
    for mapping in re.findall(r"ports:\s*\[([^\]]*)\]", compose):
        for port in re.findall(r'"([^"]+)"', mapping):
            assert port.startswith("127.0.0.1:"), port
