"""The README's "Get an API key" steps work as written: its commands, then its curl calls (replayed
through the test client with the key the command printed), answer what the README shows."""

from __future__ import annotations

import json
import re
import shlex
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def key_section_commands() -> list[tuple[str, str | None]]:
    """(command line, the JSON the README shows after it) from the section's bash block."""
    text = (Path(settings.BASE_DIR) / "README.md").read_text()
    section = text[text.index("### Get an API key") :]
    block = section[section.index("```bash\n") + 8 :]
    block = block[: block.index("```")].replace("\\\n", " ")
    steps, lines = [], block.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("#") or line.startswith("export"):
            continue
        shown = lines[index + 1][2:] if index + 1 < len(lines) and lines[index + 1].startswith("# {") else None
        steps.append((line, shown))
    return steps


def test_the_readme_key_steps_work_as_written():
    key = None
    steps = key_section_commands()
    assert [line.split()[0:3] for line, _ in steps][:2] == [
        ["python", "manage.py", "create_project"],
        ["python", "manage.py", "create_api_key"],
    ]
    for line, shown in steps:
        words = shlex.split(line)
        if words[:2] == ["python", "manage.py"]:
            out = StringIO()
            call_command(*words[2:], stdout=out)
            printed = json.loads(out.getvalue())
            assert set(json.loads(re.sub(r'"[^"]*…[^"]*"', '""', shown))) <= set(printed)  # the same fields
            key = printed.get("key", key)
            continue
        assert words[0] == "curl" and key is not None
        url = words[words.index("-X") + 2]
        headers = [words[i + 1] for i, word in enumerate(words) if word == "-H"]
        body = json.loads(words[words.index("-d") + 1])
        assert "Authorization: Api-Key $KEY" in headers
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
        response = client.post(url.replace("http://127.0.0.1:8000", ""), body, format="json")
        assert response.status_code == 201, response.content
        # Ids depend on the database's sequences; every other field is as shown.
        ids = {"id", "prompt_id", "generation_id"}
        answer, expected = response.json(), json.loads(shown)
        assert set(answer) == set(expected)
        assert {k: v for k, v in answer.items() if k not in ids} == {k: v for k, v in expected.items() if k not in ids}
