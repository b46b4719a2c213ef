"""Serving model versions: a small backend interface and the default transformers backend.

The serving process (`manage.py serve_models`, training/serving_http.py) calls this module; web
workers never do (they reach the serving process over HTTP, training/serving_client.py), so torch
and the weights live in one process. Celery's queue filling and `manage.py demo`'s first batch call
it too.

The interface is narrow: prompts and the version to serve in, completions out (plus a streamed
variant). Which version answers a request is decided by training.routing.version_for_request (the
active one; a canary sends a share to a candidate), so a backend holds up to
PROSPECT_SERVING_MAX_VERSIONS versions per project. Promotions and rollbacks need no restart: the
routing rule reads the database on every request and the backend loads what it is asked for.

There is one backend per project (get_backend(project)). TransformersBackend keeps the weights in
process memory; training/vllm_backend.py drives a vLLM server with one LoRA adapter per version.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from feedback.content import validate_prompt
from feedback.models import Generation
from feedback.services import create_generations
from feedback.services.generations import GenerationInput
from projects.models import Project
from projects.selectors import resolve_project
from training.models import ModelVersion, ServedCompletion
from training.routing import NoActiveModelVersion, version_for_request
from training.serving_client import DEFAULT_MAX_NEW_TOKENS

# A prompt as stored on feedback.Prompt: a plain string, or chat messages [{"role", "content"}].
PromptContent = str | list

# Versions worth keeping loaded: the one serving and a candidate that may take a share (canary).
SERVABLE_STATUSES = (ModelVersion.Status.ACTIVE, ModelVersion.Status.CANDIDATE)

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "NoActiveModelVersion", "InferenceBackend", "TransformersBackend", "get_backend"]


class EmptyCompletion(RuntimeError):
    """The model stopped at once; an empty completion cannot be stored or rated."""


class BackendUnavailable(RuntimeError):
    """The backend cannot serve now (its inference server is down, or needs a restart); a 503."""


class InferenceBackend(ABC):
    """What Prospect needs from something that serves a project's model versions."""

    def __init__(self, project_id: int | None = None) -> None:
        self.project_id = project_id if project_id is not None else resolve_project(None).pk

    @cached_property
    def project(self) -> Project:
        """The project's row, read once: routing uses only its id, so nothing that changes in it
        changes what is served. The versions are read on every request (version_for_request), which
        is how a promotion or a rollback applies from the next request without a restart."""
        return Project.objects.get(pk=self.project_id)

    @property
    def version(self) -> ModelVersion:
        """The version a request without a routing key gets now (the project's active one)."""
        return version_for_request(self.project)

    @abstractmethod
    def generate(
        self,
        prompts: list[PromptContent],
        *,
        version: ModelVersion | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """One completion per prompt from `version` (None: `self.version`); temperature 0 = greedy."""

    def stream(
        self,
        prompt: PromptContent,
        *,
        version: ModelVersion,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Iterator[str]:
        """One prompt's completion in pieces as they are generated; joined, they are the completion.

        The default yields the whole completion at once; backends that can stream override it."""
        yield from self.generate(
            [prompt], version=version, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
        )

    def held_version_ids(self) -> list[int]:
        """The versions loaded now, most recently used last (for status pages and tests)."""
        return []

    def count_tokens(self, version: ModelVersion, text: str) -> int | None:
        """Tokens of `text` in `version`'s tokenizer (None: unknown), for finish_reason "length"."""
        return None


@dataclass
class _LoadedModel:
    key: tuple
    version: ModelVersion
    model: Any
    tokenizer: Any


def _cache_key(version: ModelVersion) -> tuple:
    # The artifact is part of the key, not only the id: ids can be reused after a database reset.
    return (version.pk, version.artifact_path, version.is_adapter)


class TransformersBackend(InferenceBackend):
    """Holds a project's versions in memory with transformers (+ peft for adapters), up to
    PROSPECT_SERVING_MAX_VERSIONS at once; the least recently used one makes room for a new one,
    and versions that can no longer be served (retired, rejected) are dropped when one is loaded."""

    def __init__(self, project_id: int | None = None, max_versions: int | None = None) -> None:
        super().__init__(project_id)
        self.max_versions = max(1, max_versions or settings.PROSPECT_SERVING_MAX_VERSIONS)
        self._loaded: OrderedDict[tuple, _LoadedModel] = OrderedDict()
        # Threads of the serving process call us concurrently; one generation at a time per model
        # set (torch on CPU gains nothing from interleaving, and the seeded RNG is process-global).
        self._lock = threading.RLock()

    @property
    def loaded_version_id(self) -> int | None:
        """The version used last (None before the first call)."""
        with self._lock:
            return next(reversed(self._loaded.values())).version.pk if self._loaded else None

    def held_version_ids(self) -> list[int]:
        with self._lock:
            return [loaded.version.pk for loaded in self._loaded.values()]

    def count_tokens(self, version: ModelVersion, text: str) -> int | None:
        with self._lock:
            tokenizer = self._load(version).tokenizer
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self,
        prompts: list[PromptContent],
        *,
        version: ModelVersion | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        with self._lock:
            loaded = self._load(version or self.version)
            return _generate_with_model(
                loaded.model,
                loaded.tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed,
            )

    def stream(
        self,
        prompt: PromptContent,
        *,
        version: ModelVersion,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Iterator[str]:
        from training.kto.generation import stream_completion

        with self._lock:
            loaded = self._load(version)
        # The generation thread takes the lock itself, so a slow reader does not hold it.
        yield from stream_completion(
            (loaded.model, loaded.tokenizer),
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=0 if seed is None else seed,
            lock=self._lock,
        )

    def _load(self, version: ModelVersion) -> _LoadedModel:
        """The in-memory model of `version`, loading it (and making room) if it is not held."""
        key = _cache_key(version)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            self._drop_unservable()
            # Drop before loading, so no more than max_versions models ever sit in memory.
            while len(self._loaded) >= self.max_versions:
                self._loaded.popitem(last=False)
            model, tokenizer = load_model_version(version)
            self._loaded[key] = _LoadedModel(key, version, model, tokenizer)
            return self._loaded[key]

    def _drop_unservable(self) -> None:
        if not self._loaded:
            return
        servable = set(
            ModelVersion.objects.filter(
                pk__in=[loaded.version.pk for loaded in self._loaded.values()], status__in=SERVABLE_STATUSES
            ).values_list("pk", flat=True)
        )
        for key in [key for key, loaded in self._loaded.items() if loaded.version.pk not in servable]:
            del self._loaded[key]


def load_model_version(version: ModelVersion):
    """(model, tokenizer) for a version: full weights, or its peft adapter merged into its base."""
    import torch

    from training.kto.generation import load_for_generation

    model, tokenizer = load_for_generation(version.artifact_path)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    return model, tokenizer


def _generate_with_model(model, tokenizer, prompts, *, max_new_tokens, temperature, seed) -> list[str]:
    # The engine's generation helper: same prompt formatting (chat template, BOS handling) and
    # decoding as the engine's training and evaluation, so served outputs match what it learns on.
    from training.kto.generation import generate_completions

    return generate_completions(
        (model, tokenizer),
        list(prompts),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=0 if seed is None else seed,
    )


_backends: dict[int, InferenceBackend] = {}
_backend_lock = threading.Lock()


def get_backend(project: Project | str | None = None) -> InferenceBackend:
    """The process-wide backend of a project (settings.PROSPECT_INFERENCE_BACKEND, a dotted class
    path, constructed with the project's id)."""
    project = resolve_project(project)
    with _backend_lock:
        if project.pk not in _backends:
            _backends[project.pk] = import_string(settings.PROSPECT_INFERENCE_BACKEND)(project_id=project.pk)
        return _backends[project.pk]


def generate_for_prompt(
    prompt_content: PromptContent,
    *,
    source: str = "api",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    seed: int | None = None,
    backend: InferenceBackend | None = None,
    project: Project | str | None = None,
    routing_key: str | None = None,
) -> Generation:
    """Generate one completion from the version routed to (the active one, or a canary's candidate)
    and store it as a Generation to be rated."""
    return generate_for_prompts(
        [prompt_content],
        source=source,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        backend=backend,
        project=project,
        routing_key=routing_key,
    )[0]


def generate_for_prompts(
    prompt_contents: list[PromptContent],
    *,
    source: str = "api",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    seed: int | None = None,
    backend: InferenceBackend | None = None,
    skip_empty: bool = False,
    project: Project | str | None = None,
    routing_key: str | None = None,
    version: ModelVersion | None = None,
    record_served: bool = False,
) -> list[Generation]:
    """Batched `generate_for_prompt`: one forward pass for all prompts, one row per prompt.

    The (prompt, completion) pair is unique in the data model, so a completion the model already
    produced for that prompt reuses the existing row (its votes then count for both requests); its
    `model_version` then still names the version that first produced it, and `served_by` (set on
    every returned instance, not stored) names the version that produced it this time.
    An empty completion cannot be rated: it raises EmptyCompletion, or is left out with skip_empty.
    `version`: the version to generate with (default: the one training.routing picks for
    `routing_key`). `record_served`: also record who was served what (a product request; see
    serve_product_request).
    """
    # Validate every prompt before spending any compute; the error names the offending item.
    prompt_contents = [
        validate_prompt(content, field=f"prompts[{index}]") for index, content in enumerate(prompt_contents)
    ]
    project = resolve_project(project)
    backend = backend or get_backend(project)
    # Chosen once, then passed down: the label is right even if a promotion lands meanwhile.
    version = version or version_for_request(project, routing_key=routing_key)
    completions = backend.generate(
        prompt_contents, version=version, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )
    return store_completions(
        project,
        version,
        prompt_contents,
        completions,
        source=source,
        skip_empty=skip_empty,
        routing_key=routing_key,
        record_served=record_served,
    )


def store_completions(
    project: Project,
    version: ModelVersion,
    prompt_contents: list[PromptContent],
    completions: list[str],
    *,
    source: str,
    skip_empty: bool = False,
    routing_key: str | None = None,
    record_served: bool = False,
) -> list[Generation]:
    """Store what `version` answered as Generations (see generate_for_prompts for reuse and
    `served_by`); an empty completion raises EmptyCompletion, or is left out with skip_empty.
    With record_served, a ServedCompletion per generation says which version served it to which
    end user (`routing_key`): a generation row is shared by identical completions, so only this
    record lets a canary credit the end user's thumbs to the version they saw."""
    items = []
    for content, completion in zip(prompt_contents, completions):
        if not completion.strip():
            if skip_empty:
                continue
            raise EmptyCompletion(f"model version {version.name} produced an empty completion")
        items.append(GenerationInput(prompt=content, completion=completion, source=source, model_version_id=version.pk))
    generations = []
    for generation, _created in create_generations(items, project):
        generation.served_by = version
        generations.append(generation)
    if record_served:
        ServedCompletion.objects.bulk_create(
            ServedCompletion(project=project, generation=generation, version=version, routing_key=routing_key or "")
            for generation in generations
        )
    return generations


def serve_product_request(
    prompt_content: PromptContent,
    *,
    project: Project | str | None = None,
    routing_key: str | None = None,
    source: str = "api",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    backend: InferenceBackend | None = None,
) -> Generation:
    """Answer one product request: the version training.routing picks for this end user (the
    active one, or a candidate during its canary) generates; the generation is stored with that
    version, and a ServedCompletion records who was served what, so the end user's thumbs count
    for the version they saw."""
    return generate_for_prompts(
        [prompt_content],
        source=source,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        backend=backend,
        project=project,
        routing_key=routing_key,
        record_served=True,
    )[0]


def unrated_generation_count(project: Project | str | None = None) -> int:
    """Outputs in the project's annotation queue that nobody has voted on yet."""
    return Generation.objects.filter(project=resolve_project(project), votes__isnull=True).count()


def top_up_annotation_queue(target: int, project: Project | str | None = None, **options) -> list[Generation]:
    """Sample just enough fresh outputs that `target` unrated ones wait in the project's queue."""
    project = resolve_project(project)
    missing = target - unrated_generation_count(project)
    return fill_annotation_queue(missing, project=project, **options) if missing > 0 else []


def fill_annotation_queue(
    n: int,
    *,
    prompts: list[PromptContent] | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    seed: int | None = None,
    backend: InferenceBackend | None = None,
    project: Project | str | None = None,
) -> list[Generation]:
    """Sample fresh completions from the active version for `n` prompts and queue them for rating.

    Prompts default to the demo task's training prompts (a different draw each call unless `seed`
    is given). Sampling (temperature > 0) rather than greedy decoding gives annotators both good
    and bad outputs of the current model, which is what KTO learns from.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    project = resolve_project(project)
    if seed is None:
        seed = Generation.objects.filter(project=project).count()
    if prompts is None:
        from training.kto.demo import demo_prompts

        prompts = list(demo_prompts(n, seed=seed, split="train"))
    return generate_for_prompts(
        list(prompts)[:n],
        source="fill_queue",
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        backend=backend,
        skip_empty=True,
        project=project,
    )
