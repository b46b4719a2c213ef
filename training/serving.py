"""Serving the active model version: a small backend interface and the default transformers backend.

The interface is deliberately narrow (a list of prompts in, a list of completions out, plus the
version being served) so that a backend talking to a vLLM server with one LoRA adapter per model
version can implement it later without touching the callers.

There is one backend per project (get_backend(project)): each follows its own project's active
version. The default backend keeps its project's model in process memory and checks, on every call,
which version is active (one indexed query). When an admin promotes or rolls back, the next call loads the new
version: no restart of the web server or the worker is needed.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
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

# A prompt as stored on feedback.Prompt: a plain string, or chat messages [{"role", "content"}].
PromptContent = str | list

DEFAULT_MAX_NEW_TOKENS = 32


class EmptyCompletion(RuntimeError):
    """The model stopped at once; an empty completion cannot be stored or rated."""


class InferenceBackend(ABC):
    """What Prospect needs from something that serves the active model version."""

    @property
    @abstractmethod
    def version(self) -> ModelVersion:
        """The model version the next `generate` call will use (reloading first if it changed)."""

    @abstractmethod
    def generate(
        self,
        prompts: list[PromptContent],
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
        version: ModelVersion | None = None,
    ) -> list[str]:
        """One completion per prompt from `version` (default `self.version`, the active one: a
        canary's candidate is passed explicitly); temperature 0 means greedy decoding."""


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
    """Loads a project's active version with transformers (+ peft for adapters) and follows promotions."""

    def __init__(self, project_id: int | None = None) -> None:
        self.project_id = project_id if project_id is not None else resolve_project(None).pk
        self._loaded: _LoadedModel | None = None
        # A second slot for a candidate answering a canary's share of requests, so alternating
        # requests do not reload the active model each time.
        self._other: _LoadedModel | None = None
        # gunicorn threads or a threaded runserver may call us concurrently; one model at a time.
        self._lock = threading.RLock()

    @property
    def version(self) -> ModelVersion:
        return self._current().version

    @property
    def loaded_version_id(self) -> int | None:
        """The version currently held in memory (None before the first call); for tests and status."""
        return self._loaded.version.pk if self._loaded else None

    def generate(
        self,
        prompts: list[PromptContent],
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        seed: int | None = None,
        version: ModelVersion | None = None,
    ) -> list[str]:
        with self._lock:
            loaded = self._current(version)
            return _generate_with_model(
                loaded.model,
                loaded.tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed,
            )

    def _current(self, version: ModelVersion | None = None) -> _LoadedModel:
        """The in-memory model for the active version (or `version`), (re)loading it when it changed."""
        active = ModelVersion.objects.filter(project_id=self.project_id, status=ModelVersion.Status.ACTIVE).first()
        if active is None:
            raise NoActiveModelVersion("no model version is active: promote one on the Models page first")
        if version is not None and version.pk != active.pk:
            with self._lock:
                if self._other is None or self._other.key != _cache_key(version):
                    self._other = None
                    model, tokenizer = load_model_version(version)
                    self._other = _LoadedModel(_cache_key(version), version, model, tokenizer)
                return self._other
        with self._lock:
            if self._loaded is None or self._loaded.key != _cache_key(active):
                # Drop the old model before loading the new one so two never sit in memory at once.
                self._loaded = None
                model, tokenizer = load_model_version(active)
                self._loaded = _LoadedModel(_cache_key(active), active, model, tokenizer)
            return self._loaded


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


def _generate_stable(
    backend: InferenceBackend, prompts, version: ModelVersion | None = None, **options
) -> tuple[ModelVersion, list[str]]:
    """Completions and the version that produced them, even if a promotion lands meanwhile."""
    if version is not None:
        return version, backend.generate(prompts, version=version, **options)
    for _ in range(3):
        version = backend.version
        completions = backend.generate(prompts, **options)
        # A promotion between the two calls would mislabel the outputs: generate again then.
        if backend.version.pk == version.pk:
            return version, completions
    raise RuntimeError("the active model version kept changing while generating; try again")


def generate_for_prompt(
    prompt_content: PromptContent,
    *,
    source: str = "api",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    seed: int | None = None,
    backend: InferenceBackend | None = None,
    project: Project | str | None = None,
) -> Generation:
    """Generate one completion from the project's active version and store it as a Generation to be rated."""
    return generate_for_prompts(
        [prompt_content],
        source=source,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        backend=backend,
        project=project,
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
    version: ModelVersion | None = None,
) -> list[Generation]:
    """Batched `generate_for_prompt`: one forward pass for all prompts, one row per prompt.

    The (prompt, completion) pair is unique in the data model, so a completion the model already
    produced for that prompt reuses the existing row (its votes then count for both requests); its
    `model_version` then still names the version that first produced it, and `served_by` (set on
    every returned instance, not stored) names the version that produced it this time.
    An empty completion cannot be rated: it raises EmptyCompletion, or is left out with skip_empty.
    `version`: the version to generate with (default: the active one).
    """
    # Validate every prompt before spending any compute; the error names the offending item.
    prompt_contents = [
        validate_prompt(content, field=f"prompts[{index}]") for index, content in enumerate(prompt_contents)
    ]
    project = resolve_project(project)
    backend = backend or get_backend(project)
    version, completions = _generate_stable(
        backend, prompt_contents, version, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )
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
    return generations


def serve_product_request(
    prompt_content: PromptContent,
    *,
    project: Project | str | None = None,
    routing_key: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    backend: InferenceBackend | None = None,
) -> Generation:
    """Answer one product request: the version training.routing picks for this end user (the
    active one, or a candidate during its canary) generates; the generation is stored with that
    version, and a ServedCompletion records who was served what, so the end user's thumbs count
    for the version they saw."""
    project = resolve_project(project)
    version = version_for_request(project, routing_key=routing_key)
    generation = generate_for_prompts(
        [prompt_content],
        source="api",
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        backend=backend,
        project=project,
        version=version,
    )[0]
    ServedCompletion.objects.create(
        project=project, generation=generation, version=version, routing_key=routing_key or ""
    )
    return generation


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
