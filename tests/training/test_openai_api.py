"""The serving process's OpenAI-compatible API (training/openai_api.py), called in this process
through its WSGI application (tests/helpers.InProcessServing): auth, OpenAI's error shape, the
generation id on every answer, streaming, and versions held side by side.

The official `openai` client against live processes: tests/training/test_openai_api_live.py.
"""

from __future__ import annotations

import json

import httpx
import pytest

from feedback.models import Generation
from projects.services import create_api_key
from tests.helpers import InProcessServing
from training.models import ModelVersion, ServedCompletion
from training.serving import get_backend, store_completions

PROMPT = [{"role": "user", "content": "What is 12+7?"}]


@pytest.fixture
def serving():
    client = httpx.Client(transport=InProcessServing(), base_url="http://serving")
    yield client
    client.close()


@pytest.fixture
def demo_key(active_demo_version):
    _, key = create_api_key(active_demo_version.project, scopes="generate,votes:write")
    return key


def call(serving, path, key, body=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is None:
        return serving.get(path, headers=headers)
    return serving.post(path, headers=headers, json=body)


def assert_openai_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.django_db
def test_a_chat_completion_is_stored_and_names_its_generation(serving, demo_key, active_demo_version):
    body = {"model": "demo", "messages": PROMPT, "max_tokens": 5, "temperature": 0}
    response = call(serving, "/v1/chat/completions", demo_key, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion" and answer["model"] == "demo"
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    generation = Generation.objects.get(pk=answer["prospect_generation_id"])
    assert generation.completion == choice["message"]["content"]
    assert generation.prompt.content == PROMPT and generation.source == "openai"
    assert generation.model_version == active_demo_version
    assert response.headers["X-Prospect-Generation-Id"] == str(generation.pk)
    assert response.headers["X-Prospect-Model-Version"] == active_demo_version.name
    assert answer["prospect_model_version_id"] == active_demo_version.pk


@pytest.mark.django_db
def test_completions_answer_a_batch_with_one_generation_each(serving, demo_key):
    prompts = ["What is 1+2?", "What is 3+4?"]
    response = call(
        serving, "/v1/completions", demo_key, {"model": "demo", "prompt": prompts, "max_tokens": 4, "temperature": 0}
    )
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert [choice["index"] for choice in choices] == [0, 1]
    for prompt, choice in zip(prompts, choices):
        if choice["text"].strip():
            generation = Generation.objects.get(pk=choice["prospect_generation_id"])
            assert (generation.prompt.content, generation.completion) == (prompt, choice["text"])
        else:  # an empty completion cannot be rated: answered, not stored
            assert choice["prospect_generation_id"] is None


class ScriptedBackend:
    """Answers each batch with the given completions, whatever the prompts (the storing is under test)."""

    def __init__(self, completions: list[str]):
        self.completions = completions

    def generate(self, prompts, **options) -> list[str]:
        assert len(prompts) == len(self.completions)
        return list(self.completions)

    def count_tokens(self, version, text) -> None:
        return None


@pytest.mark.django_db
def test_a_batch_is_stored_in_one_call_and_each_choice_names_its_own_generation(
    serving, demo_key, active_demo_version, monkeypatch
):
    from training import openai_api

    prompts = ["What is 1+2?", "What is 3+4?", "What is 5+6?", "What is 7+8?"]
    texts = ["3", "  ", "11", "15"]  # the empty one is answered, not stored
    monkeypatch.setattr(openai_api, "get_backend", lambda project: ScriptedBackend(texts))
    calls = []

    def counted_store_completions(*args, **kwargs):
        calls.append(args[2])
        return store_completions(*args, **kwargs)

    monkeypatch.setattr(openai_api, "store_completions", counted_store_completions)
    body = {"model": "demo", "prompt": prompts, "max_tokens": 4, "user": "end-user-9"}
    response = call(serving, "/v1/completions", demo_key, body)
    assert response.status_code == 200, response.text
    assert calls == [prompts]  # one call for the whole batch
    choices = response.json()["choices"]
    ids = [choice["prospect_generation_id"] for choice in choices]
    assert ids[1] is None and len(set(ids)) == 4
    for prompt, text, choice in zip(prompts, texts, choices):
        assert choice["text"] == text
        if choice["prospect_generation_id"] is not None:
            generation = Generation.objects.get(pk=choice["prospect_generation_id"])
            assert (generation.prompt.content, generation.completion) == (prompt, text)
            assert generation.model_version == active_demo_version
    assert response.headers["X-Prospect-Generation-Id"] == ",".join(str(i) for i in ids if i is not None)
    served = ServedCompletion.objects.filter(generation_id__in=[i for i in ids if i is not None])
    assert sorted(served.values_list("generation_id", flat=True)) == sorted(i for i in ids if i is not None)
    assert set(served.values_list("routing_key", "version_id")) == {("end-user-9", active_demo_version.pk)}


@pytest.mark.django_db
def test_a_streamed_chat_completion_joins_to_the_stored_generation(serving, demo_key):
    body = {"model": "demo", "messages": PROMPT, "max_tokens": 6, "temperature": 0, "stream": True}
    response = call(serving, "/v1/chat/completions", demo_key, body)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    events = [line[len("data: ") :] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert Generation.objects.get(pk=final["prospect_generation_id"]).completion == text
    # The same request without streaming gives the same (greedy) text: streaming changes delivery only.
    plain = call(serving, "/v1/chat/completions", demo_key, {**body, "stream": False}).json()
    assert plain["choices"][0]["message"]["content"] == text
    assert plain["prospect_generation_id"] == final["prospect_generation_id"]


@pytest.mark.django_db
def test_models_lists_the_keys_project(serving, demo_key, active_demo_version):
    listed = call(serving, "/v1/models", demo_key).json()
    assert [entry["id"] for entry in listed["data"]] == ["demo"]
    assert listed["data"][0]["prospect_model_version"] == active_demo_version.name


@pytest.mark.django_db
def test_errors_come_in_openais_shape(serving, demo_key, active_demo_version):
    body = {"model": "demo", "messages": PROMPT, "max_tokens": 3}
    assert_openai_error(call(serving, "/v1/chat/completions", None, body), 401, "invalid_api_key")
    assert_openai_error(call(serving, "/v1/chat/completions", "nope.wrong", body), 401, "invalid_api_key")
    _, votes_only = create_api_key(active_demo_version.project, scopes="votes:write")
    assert_openai_error(call(serving, "/v1/chat/completions", votes_only, body), 403, "insufficient_scope")
    other = call(serving, "/v1/chat/completions", demo_key, {**body, "model": "gpt-4o"})
    assert "'demo'" in assert_openai_error(other, 404, "model_not_found", "model")["message"]
    assert_openai_error(call(serving, "/v1/chat/completions", demo_key, {**body, "n": 2}), 400, "unsupported", "n")
    assert_openai_error(
        call(serving, "/v1/chat/completions", demo_key, {**body, "max_tokens": 0}), 400, param="max_tokens"
    )
    bad_role = {**body, "messages": [{"role": "robot", "content": "hi"}]}
    assert "role" in assert_openai_error(call(serving, "/v1/chat/completions", demo_key, bad_role), 400)["param"]
    assert_openai_error(call(serving, "/v1/nowhere", demo_key, body), 404, "not_found")
    ModelVersion.objects.update(status=ModelVersion.Status.RETIRED)
    down = call(serving, "/v1/chat/completions", demo_key, body)
    assert_openai_error(down, 503, "no_active_version")
    assert int(down.headers["Retry-After"]) > 0
    assert Generation.objects.count() == 0  # nothing half-saved by any refused request


@pytest.mark.django_db
def test_the_backend_holds_the_active_version_and_one_more(active_demo_version, demo_model_dir, tmp_path):
    """Active + a candidate side by side (a canary's two versions); a third evicts the least recent."""
    import shutil

    backend = get_backend(active_demo_version.project)
    versions = [active_demo_version]
    for name in ("b", "c"):
        copy = tmp_path / name
        shutil.copytree(demo_model_dir, copy)
        versions.append(
            ModelVersion.objects.create(
                project=active_demo_version.project, name=name, base_model=demo_model_dir, artifact_path=str(copy)
            )
        )
    a, b, c = versions
    backend.generate(["What is 1+1?"], version=a, max_new_tokens=2)
    backend.generate(["What is 1+1?"], version=b, max_new_tokens=2)
    assert backend.held_version_ids()[-2:] == [a.pk, b.pk]
    backend.generate(["What is 1+1?"], version=a, max_new_tokens=2)  # a used last: b goes first
    backend.generate(["What is 1+1?"], version=c, max_new_tokens=2)
    assert set(backend.held_version_ids()) == {a.pk, c.pk}
    # A version that can no longer be served (rejected) is dropped when another one is loaded.
    ModelVersion.objects.filter(pk=c.pk).update(status=ModelVersion.Status.REJECTED)
    backend.generate(["What is 1+1?"], version=b, max_new_tokens=2)
    assert set(backend.held_version_ids()) == {a.pk, b.pk}
