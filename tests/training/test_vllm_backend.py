"""The vLLM backend's adapter lifecycle, against a STAND-IN vLLM server (tests/training/vllm_stand_in.py:
vLLM's endpoints and shapes, no model; this machine has no CUDA). Each LoRA version is loaded under a
name of its own (never reused for other weights), retired ones are unloaded, a full-weight version
asks for a restart (or runs the configured reload command). The real vLLM: bench/serving_vllm_gpu.py.
"""

from __future__ import annotations

import json
import sys

import httpx
import pytest

from feedback.models import Generation
from projects.selectors import default_project
from projects.services import create_api_key
from tests.helpers import InProcessServing
from tests.training.vllm_stand_in import StandInVLLM
from training import serving, vllm_backend
from training.models import ModelVersion
from training.vllm_backend import NeedsReload, VLLMBackend, VLLMServer

BASE = "Qwen/Qwen2.5-0.5B-Instruct"
Status = ModelVersion.Status


@pytest.fixture
def stand_in():
    with StandInVLLM(BASE) as server:
        yield server


def make_adapter(tmp_path, name: str, weights: bytes = b"") -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": BASE, "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(weights or name.encode() * 64)
    return str(folder)


def version(name: str, path: str, status=Status.CANDIDATE, is_adapter=True, base=BASE) -> ModelVersion:
    return ModelVersion.objects.create(
        project=default_project(), name=name, base_model=base, artifact_path=path, is_adapter=is_adapter, status=status
    )


def activate(target: ModelVersion) -> None:
    # What registry.promote does to the statuses (it also checks real weights, which these are not).
    ModelVersion.objects.filter(project=target.project, status=Status.ACTIVE).update(status=Status.RETIRED)
    ModelVersion.objects.filter(pk=target.pk).update(status=Status.ACTIVE)


@pytest.mark.django_db
def test_each_lora_version_gets_its_own_name_and_retired_ones_are_unloaded(stand_in, tmp_path):
    backend = VLLMBackend(default_project().pk, server=VLLMServer(stand_in.url, max_adapters=2))
    a = version("a", make_adapter(tmp_path, "a"), Status.ACTIVE)
    (text,) = backend.generate(["What is 1+1?"], max_new_tokens=4)
    name_a = VLLMServer.adapter_name(vllm_backend.Weights(a.pk, a.artifact_path, True, BASE, a.project_id))
    assert name_a.startswith(f"prospect-p{a.project_id}-v{a.pk}-")
    assert text == f"{name_a}|What is 1+1?"  # the request named the adapter
    assert set(stand_in.adapters) == {name_a}

    # Promotion: the next request loads b; a, now retired, is unloaded.
    b = version("b", make_adapter(tmp_path, "b"))
    activate(b)
    (text,) = backend.generate(["What is 2+2?"], max_new_tokens=4)
    name_b = text.split("|")[0]
    assert name_b.startswith(f"prospect-p{b.project_id}-v{b.pk}-") and set(stand_in.adapters) == {name_b}
    assert backend.server.events == [("load", name_a), ("unload", name_a), ("load", name_b)]

    # A canary: the active version and a candidate side by side; a third one evicts the least recent.
    c = version("c", make_adapter(tmp_path, "c"))
    backend.generate(["x"], version=c, max_new_tokens=4)
    assert len(stand_in.adapters) == 2 and backend.held_version_ids() == [b.pk, c.pk]
    d = version("d", make_adapter(tmp_path, "d"))
    backend.generate(["x"], version=d, max_new_tokens=4)
    assert backend.held_version_ids() == [c.pk, d.pk] and name_b not in stand_in.adapters

    # Other weights under the same version id (files rewritten, or an id reused after a reset):
    # another name, and the old one is unloaded, never answered from again.
    (tmp_path / "d" / "adapter_model.safetensors").write_bytes(b"retrained" * 64)
    (text,) = backend.generate(["x"], version=d, max_new_tokens=4)
    loaded = [name for kind, name in backend.server.events if kind == "load"]
    assert len(loaded) == len(set(loaded)) == 5  # a, b, c, d, d-again: no name ever loaded twice
    assert text.split("|")[0] == loaded[-1] and loaded[-1] != loaded[-2] and loaded[-2] not in stand_in.adapters

    # vLLM restarted behind Prospect's back (its adapters gone): loaded again, same weights, same name.
    stand_in.adapters.clear()
    (text,) = backend.generate(["x"], version=d, max_new_tokens=4)
    assert text.split("|")[0] == loaded[-1] and loaded[-1] in stand_in.adapters

    # Streaming relays vLLM's events as pieces.
    pieces = list(backend.stream("What is 3+3?", version=d, max_new_tokens=4))
    assert len(pieces) > 1 and "".join(pieces) == f"{loaded[-1]}|What is 3+3?"


@pytest.mark.django_db
def test_full_weights_need_vllm_restarted_on_them(stand_in, tmp_path):
    full = version("full", str(tmp_path / "merged"), Status.ACTIVE, is_adapter=False, base=BASE)
    refusing = VLLMBackend(default_project().pk, server=VLLMServer(stand_in.url))
    with pytest.raises(NeedsReload, match=f"vllm serve {tmp_path / 'merged'}"):
        refusing.generate(["hi"], max_new_tokens=2)
    assert stand_in.root == BASE and not stand_in.adapters

    # With a reload command, Prospect restarts vLLM on the version's weights and waits for it.
    restart = f"{sys.executable} -c \"import httpx,sys; httpx.post(sys.argv[1], json={{'model': sys.argv[2]}})\""
    command = f"{restart} {stand_in.url}/stand-in/restart {{path}}"
    reloading = VLLMBackend(default_project().pk, server=VLLMServer(stand_in.url, reload_command=command))
    (text,) = reloading.generate(["hi"], max_new_tokens=2)
    assert stand_in.root == full.artifact_path and text == f"{full.artifact_path}|hi"
    assert reloading.server.events == [("reload", full.artifact_path)]


@pytest.mark.django_db
def test_the_openai_api_serves_through_vllm(stand_in, tmp_path, settings, monkeypatch):
    settings.PROSPECT_INFERENCE_BACKEND = "training.vllm_backend.VLLMBackend"
    settings.PROSPECT_VLLM_URL = stand_in.url
    monkeypatch.setattr(serving, "_backends", {})
    monkeypatch.setattr(vllm_backend, "_servers", {})
    active = version("lora-1", make_adapter(tmp_path, "lora-1"), Status.ACTIVE)
    _, key = create_api_key(default_project(), scopes="generate")
    with httpx.Client(transport=InProcessServing(), base_url="http://serving") as client:
        body = {"model": "demo", "messages": [{"role": "user", "content": "What is 2+5?"}], "max_tokens": 8}
        answer = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}).json()
        generation = Generation.objects.get(pk=answer["prospect_generation_id"])
        assert generation.model_version == active
        assert generation.completion.startswith(f"prospect-p{active.project_id}-v{active.pk}-")
        # vLLM down: a 503 in OpenAI's shape, not a 500.
        settings.PROSPECT_VLLM_URL = "http://127.0.0.1:9"
        monkeypatch.setattr(serving, "_backends", {})
        down = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
        assert down.status_code == 503 and down.json()["error"]["code"] == "backend_unavailable"
