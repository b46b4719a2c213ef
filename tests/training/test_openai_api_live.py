"""A product team's integration against live processes: the official `openai` client calls the web
app's /v1/ (the shipped web server, torch made unimportable in it), which forwards to a live serving process
(`manage.py serve_models`, the demo model); the generation id it returns takes the end user's
thumbs to the vote API. Also: the web's /api/v1/generate/ goes through the serving process, and
the serving process follows a promotion without a restart.

The two processes start once for the module and use the test database (committed rows).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import httpx
import openai
import pytest

from feedback.models import Generation, Vote
from projects.selectors import default_project
from projects.services import create_api_key
from tests.helpers import REPO, database_url_for_workers, free_port, wait_for
from training import registry
from training.models import ModelVersion

BLOCK_MODEL_LIBRARIES = textwrap.dedent(
    """
    # Loaded at start-up of the web process under test (PYTHONPATH): importing a model library fails.
    import sys

    class _NoModelLibraries:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("torch", "transformers", "peft", "accelerate", "vllm"):
                raise ImportError(f"a web worker must not import {name}")
            return None

    sys.meta_path.insert(0, _NoModelLibraries())
    """
)


def _start(argv, env, log_path):
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code < 500
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def live_stack(django_db_setup, django_db_blocker, demo_model_dir, tmp_path_factory):
    """(web URL, serving URL): the web server without torch, and `manage.py serve_models`."""
    folder = tmp_path_factory.mktemp("live-stack")
    (folder / "sitecustomize.py").write_text(BLOCK_MODEL_LIBRARIES)
    serving_port, web_port = free_port(), free_port()
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url_for_workers(),
        PROSPECT_SERVING_URL=f"http://127.0.0.1:{serving_port}",
        PROSPECT_DATA_DIR=str(folder),
        PYTHONUNBUFFERED="1",
    )
    web_env = dict(env, PYTHONPATH=f"{folder}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep))
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=web_env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "must not import torch" in blocked.stderr  # the block works
    serving = _start(
        [sys.executable, "manage.py", "serve_models", "--port", str(serving_port)], env, folder / "serving.log"
    )
    web = _start(
        [sys.executable, "-m", "config.web_server", "--port", str(web_port), "--workers", "1", "--threads", "4"],
        web_env, folder / "web.log",
    )  # fmt: skip
    logs = lambda: "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in folder.glob("*.log"))  # noqa: E731
    try:
        wait_for(
            lambda: _answers(f"http://127.0.0.1:{serving_port}/healthz"), 60, "the serving process", on_timeout=logs
        )
        wait_for(lambda: _answers(f"http://127.0.0.1:{web_port}/healthz"), 60, "the web process", on_timeout=logs)
        yield f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{serving_port}", logs
    finally:
        for process in (web, serving):
            os.killpg(process.pid, 9)
            process.wait(timeout=30)


@pytest.fixture
def demo(committed_db, live_stack, demo_model_dir):
    version = registry.ensure_base_version(demo_model_dir)
    _, key = create_api_key(default_project(), scopes="generate,votes:write")
    web_url, serving_url, logs = live_stack
    return {"version": version, "key": key, "web": web_url, "serving": serving_url, "logs": logs}


def test_the_openai_client_gets_a_completion_and_sends_the_thumbs_back(demo):
    client = openai.OpenAI(base_url=f"{demo['web']}/v1", api_key=demo["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "What is 12+7?"}], max_tokens=6, temperature=0, user="u-1"
    )
    completion = raw.parse()
    generation_id = completion.prospect_generation_id  # the documented extra field
    assert raw.headers["X-Prospect-Generation-Id"] == str(generation_id)
    assert raw.headers["X-Prospect-Model-Version"] == demo["version"].name
    generation = Generation.objects.get(pk=generation_id)
    assert generation.completion == completion.choices[0].message.content
    assert generation.model_version == demo["version"]

    # The end user's thumbs, with the same key, to the vote API.
    vote = httpx.post(
        f"{demo['web']}/api/v1/votes/",
        json={"generation_id": generation_id, "desirable": True, "external_user_id": "u-1"},
        headers={"Authorization": f"Bearer {demo['key']}"},
    )
    assert vote.status_code == 201, vote.text
    assert Vote.objects.get(generation=generation).desirable is True

    # Streaming, through the web app's forwarding: pieces as events, the id on the final chunk.
    stream = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "What is 12+7?"}], max_tokens=6, temperature=0, stream=True
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == completion.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].prospect_generation_id == generation_id  # the same (prompt, completion) row

    # Legacy completions and the model list, straight at the serving process this time.
    direct = openai.OpenAI(base_url=f"{demo['serving']}/v1", api_key=demo["key"], max_retries=0)
    assert [model.id for model in direct.models.list()] == ["demo"]
    legacy = direct.completions.create(model="demo", prompt="What is 3+4?", max_tokens=4, temperature=0)
    assert Generation.objects.filter(pk=legacy.prospect_generation_id).exists() or not legacy.choices[0].text.strip()

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{demo['web']}/v1", api_key="wrong.key", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"


def test_web_generate_goes_through_the_serving_process_which_follows_a_promotion(demo, tmp_path):
    import shutil

    headers = {"Authorization": f"Api-Key {demo['key']}"}
    first = httpx.post(
        f"{demo['web']}/api/v1/generate/", json={"prompt": "What is 2+3?", "max_new_tokens": 4}, headers=headers
    )
    assert first.status_code == 200, first.text + demo["logs"]()  # with torch unimportable in the web process
    assert first.json()["model_version"] == demo["version"].name

    copy = tmp_path / "copy"
    shutil.copytree(demo["version"].artifact_path, copy)
    newer = ModelVersion.objects.create(
        project=demo["version"].project, name="newer", base_model=demo["version"].base_model, artifact_path=str(copy)
    )
    registry.promote(newer, reason="test")
    # No restart: the next request is served by the promoted version.
    second = httpx.post(
        f"{demo['web']}/api/v1/generate/", json={"prompt": "What is 2+4?", "max_new_tokens": 4}, headers=headers
    )
    assert second.status_code == 200 and second.json()["model_version"] == "newer", second.text
    assert Generation.objects.get(pk=second.json()["generation_id"]).model_version == newer
    assert "Traceback" not in demo["logs"]()
