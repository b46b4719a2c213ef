"""The vLLM backend (PROSPECT_SERVING=vllm): the serving process drives a vLLM OpenAI server.

vLLM holds the base model; Prospect hands it each LoRA version at run time:

- a LoRA version is loaded with `POST /v1/load_lora_adapter` under a name of its own,
  `prospect-p<project>-v<version id>-<hash of the adapter's files>`: a name is never reused for
  other weights (a database reset that reuses an id, or files rewritten in place, give another
  hash, hence another name), because vLLM would keep answering from what it loaded first;
- requests name the adapter as their `model`;
- adapters of versions that can no longer be served (retired, rejected) are unloaded
  (`POST /v1/unload_lora_adapter`) when another one is loaded, and at most
  PROSPECT_SERVING_MAX_VERSIONS per project stay loaded (the least recently used goes first);
- a full-weight version (or an adapter trained on another base than the one vLLM serves) cannot be
  swapped into a running vLLM: vLLM must be restarted on its directory. With
  PROSPECT_VLLM_RELOAD_COMMAND (e.g. `systemctl restart vllm@{path}` or a script that recreates the
  container) Prospect runs it and waits until vLLM serves that directory; without it, the request is
  refused (503) with the command to run.

vLLM needs `--enable-lora` (with `--max-loras` and `--max-lora-rank` large enough) and the
environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; it must see the adapters at the same
paths as Prospect (the shared data volume in docker-compose).

VLLMServer is the lifecycle without Django (bench/serving_vllm_gpu.py drives it directly);
VLLMBackend maps model versions onto it. Differences from the transformers backend: vLLM formats
prompts itself (its chat template; a CSFT version's control-token suffix is not added) and its
sampling differs, so completions of the two backends are not token-identical.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from django.conf import settings

from training.models import ModelVersion
from training.serving import SERVABLE_STATUSES, BackendUnavailable, InferenceBackend, PromptContent
from training.serving_client import DEFAULT_MAX_NEW_TOKENS

# How long what vLLM serves (its /v1/models) is trusted before asking again: not once per request.
BASE_MODEL_TTL_SECONDS = 10.0
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
RELOAD_WAIT_SECONDS = 900


@dataclass(frozen=True)
class Weights:
    """What one model version asks vLLM to serve."""

    version_id: int
    path: str
    is_adapter: bool
    base_model: str
    project_id: int = 0


def adapter_hash(path: str) -> str:
    """sha256 over the adapter's files (config and weights), so other weights give another name."""
    digest = hashlib.sha256()
    folder = Path(path)
    for name in ADAPTER_FILES:
        file = folder / name
        if file.is_file():
            digest.update(name.encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _same_model(a: str, b: str) -> bool:
    def normal(name: str) -> str:
        path = Path(name)
        return str(path.resolve()) if path.exists() else name.rstrip("/")

    return normal(a) == normal(b)


class NeedsReload(BackendUnavailable):
    """vLLM serves other full weights than the version asks for, and no reload command is set."""


class AdapterMissing(BackendUnavailable):
    """vLLM does not know an adapter Prospect loaded (it was restarted meanwhile)."""


class VLLMServer:
    """One vLLM OpenAI server: which adapters it holds, and requests to it."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str = "",
        timeout: float = 300.0,
        reload_command: str = "",
        max_adapters: int = 2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)
        self.reload_command = reload_command
        self.max_adapters = max(1, max_adapters)
        # version id -> adapter name loaded in vLLM, least recently used first.
        self.adapters: OrderedDict[int, str] = OrderedDict()
        self.events: list[tuple[str, str]] = []  # ("load" | "unload" | "reload", name or path): for tests and benches
        self._base: tuple[float, dict] | None = None  # (when asked, the base model's entry)
        self._lock = threading.RLock()

    # --- what vLLM serves ---------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            return self.http.post(path, json=body)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"the vLLM server at {self.url} is not answering ({type(exc).__name__})") from exc

    def served_models(self) -> list[dict]:
        try:
            response = self.http.get("/v1/models")
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"the vLLM server at {self.url} is not answering ({type(exc).__name__})") from exc
        response.raise_for_status()
        return response.json()["data"]

    def base_model(self, fresh: bool = False) -> dict:
        """The served base model's entry: {"id": its served name, "root": what `vllm serve` was given}."""
        if not fresh and self._base is not None and time.monotonic() - self._base[0] < BASE_MODEL_TTL_SECONDS:
            return self._base[1]
        bases = [entry for entry in self.served_models() if not entry.get("parent")]
        if not bases:
            raise BackendUnavailable(f"the vLLM server at {self.url} serves no base model")
        self._base = (time.monotonic(), bases[0])
        return bases[0]

    @staticmethod
    def adapter_name(weights: Weights) -> str:
        return f"prospect-p{weights.project_id}-v{weights.version_id}-{adapter_hash(weights.path)[:16]}"

    def model_for(self, weights: Weights, servable: Callable[[list[int]], set[int]] | None = None) -> str:
        """The `model` to send for these weights, loading (or reloading) what is needed first.

        `servable(version_ids)` says which of the loaded versions may still be served; the others'
        adapters are unloaded when a new one is loaded."""
        with self._lock:
            base = self.base_model()
            if not weights.is_adapter or not _same_model(weights.base_model, base.get("root") or base["id"]):
                return self._full_weights(weights, base)
            name = self.adapter_name(weights)
            if self.adapters.get(weights.version_id) == name:
                self.adapters.move_to_end(weights.version_id)
                return name
            stale = self.adapters.pop(weights.version_id, None)
            if stale is not None:  # same version id, other files: the old name must go
                self._unload(stale)
            keep = servable(list(self.adapters)) if servable is not None else set(self.adapters)
            for version_id in [v for v in self.adapters if v not in keep]:
                self._unload(self.adapters.pop(version_id))
            while len(self.adapters) >= self.max_adapters:
                self._unload(self.adapters.popitem(last=False)[1])
            self._load(name, weights.path)
            self.adapters[weights.version_id] = name
            return name

    def _load(self, name: str, path: str) -> None:
        response = self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        if response.status_code != 200 and "already" not in response.text.lower():
            raise BackendUnavailable(f"vLLM refused to load adapter {name} from {path}: {response.text[:500]}")
        self.events.append(("load", name))

    def _unload(self, name: str) -> None:
        response = self._post("/v1/unload_lora_adapter", {"lora_name": name})
        # Already gone (vLLM restarted meanwhile) is what we wanted anyway.
        if response.status_code not in (200, 404) and "not found" not in response.text.lower():
            raise BackendUnavailable(f"vLLM refused to unload adapter {name}: {response.text[:500]}")
        self.events.append(("unload", name))

    def _full_weights(self, weights: Weights, base: dict) -> str:
        if _same_model(weights.path, base.get("root") or base["id"]):
            return base["id"]
        what = "full weights" if not weights.is_adapter else f"an adapter of {weights.base_model}"
        if not self.reload_command:
            raise NeedsReload(
                f"vLLM at {self.url} serves {base.get('root') or base['id']}, but model version "
                f"{weights.version_id} is {what} at {weights.path}: a running vLLM cannot swap its base "
                f"weights. Restart it on them (`vllm serve {weights.path} --enable-lora`), or set "
                "PROSPECT_VLLM_RELOAD_COMMAND so that Prospect does."
            )
        target = weights.path if not weights.is_adapter else weights.base_model
        command = [part.replace("{path}", target) for part in shlex.split(self.reload_command)]
        subprocess.run(command, check=True, timeout=RELOAD_WAIT_SECONDS)
        self.events.append(("reload", target))
        self.adapters.clear()  # a restarted vLLM holds no adapters
        deadline = time.monotonic() + RELOAD_WAIT_SECONDS
        while time.monotonic() < deadline:
            try:
                base = self.base_model(fresh=True)
                if _same_model(target, base.get("root") or base["id"]):
                    return self.model_for(weights) if weights.is_adapter else base["id"]
            except (BackendUnavailable, httpx.HTTPError):
                pass
            time.sleep(1.0)
        raise BackendUnavailable(f"vLLM did not come back serving {target} within {RELOAD_WAIT_SECONDS}s")

    def forget(self, name: str) -> None:
        """Drop what we believed about an adapter (and the base) after vLLM lost it."""
        with self._lock:
            for version_id in [v for v, loaded in self.adapters.items() if loaded == name]:
                del self.adapters[version_id]
            self._base = None

    def _check_model_known(self, model: str, response: httpx.Response) -> None:
        if response.status_code == 404 and model in self.adapters.values():
            raise AdapterMissing(f"vLLM no longer holds adapter {model}")

    # --- requests ---------------------------------------------------------------------------------
    @staticmethod
    def _request(model: str, prompt: PromptContent, max_tokens: int, temperature: float, seed, stream: bool):
        body = {"model": model, "max_tokens": max_tokens, "temperature": temperature, "stream": stream}
        if seed is not None:
            body["seed"] = seed
        if isinstance(prompt, str):
            return "/v1/completions", {**body, "prompt": prompt}
        return "/v1/chat/completions", {**body, "messages": prompt}

    @staticmethod
    def _text(choice: dict) -> str:
        return choice["text"] if "text" in choice else (choice.get("message") or {}).get("content") or ""

    def complete(self, model: str, prompts: list[PromptContent], *, max_tokens: int, temperature: float, seed=None):
        completions = []
        for prompt in prompts:
            path, body = self._request(model, prompt, max_tokens, temperature, seed, stream=False)
            response = self._post(path, body)
            self._check_model_known(model, response)
            if response.status_code != 200:
                raise BackendUnavailable(f"vLLM answered {response.status_code}: {response.text[:500]}")
            completions.append(self._text(response.json()["choices"][0]))
        return completions

    def stream(self, model: str, prompt: PromptContent, *, max_tokens: int, temperature: float, seed=None):
        path, body = self._request(model, prompt, max_tokens, temperature, seed, stream=True)
        try:
            with self.http.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    self._check_model_known(model, response)
                    raise BackendUnavailable(f"vLLM answered {response.status_code}: {response.text[:500]}")
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choices = json.loads(line[len("data: ") :]).get("choices") or []
                    if choices:
                        piece = choices[0].get("text")
                        if piece is None:
                            piece = (choices[0].get("delta") or {}).get("content")
                        if piece:
                            yield piece
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"the vLLM server at {self.url} is not answering ({type(exc).__name__})") from exc


_servers: dict[str, VLLMServer] = {}
_servers_lock = threading.Lock()


def server_for(url: str) -> VLLMServer:
    """One VLLMServer per URL and process (projects share the vLLM server and its adapter slots)."""
    with _servers_lock:
        if url not in _servers:
            _servers[url] = VLLMServer(
                url,
                api_key=settings.PROSPECT_VLLM_API_KEY,
                timeout=settings.PROSPECT_SERVING_TIMEOUT_SECONDS,
                reload_command=settings.PROSPECT_VLLM_RELOAD_COMMAND,
                max_adapters=settings.PROSPECT_SERVING_MAX_VERSIONS,
            )
        return _servers[url]


def _servable(version_ids: list[int]) -> set[int]:
    return set(
        ModelVersion.objects.filter(pk__in=version_ids, status__in=SERVABLE_STATUSES).values_list("pk", flat=True)
    )


class VLLMBackend(InferenceBackend):
    """A project's versions served by the vLLM server at PROSPECT_VLLM_URL (see the module's doc)."""

    def __init__(self, project_id: int | None = None, server: VLLMServer | None = None) -> None:
        super().__init__(project_id)
        self.server = server or server_for(settings.PROSPECT_VLLM_URL)

    def _model(self, version: ModelVersion) -> str:
        weights = Weights(
            version_id=version.pk,
            path=version.artifact_path,
            is_adapter=version.is_adapter,
            base_model=version.base_model,
            project_id=version.project_id,
        )
        return self.server.model_for(weights, servable=_servable)

    def held_version_ids(self) -> list[int]:
        return list(self.server.adapters)

    def generate(
        self,
        prompts: list[PromptContent],
        *,
        version: ModelVersion | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        version = version or self.version
        for attempt in (1, 2):
            model = self._model(version)
            try:
                return self.server.complete(
                    model, list(prompts), max_tokens=max_new_tokens, temperature=temperature, seed=seed
                )
            except AdapterMissing:
                if attempt == 2:
                    raise
                self.server.forget(model)  # vLLM restarted: load it again, once
        raise AssertionError("unreachable")

    def stream(
        self,
        prompt: PromptContent,
        *,
        version: ModelVersion,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Iterator[str]:
        model = self._model(version)
        yield from self.server.stream(model, prompt, max_tokens=max_new_tokens, temperature=temperature, seed=seed)
