"""URLs of the serving process (training/serving_http.py), not of the web app."""

from django.urls import path, re_path

from training import openai_api

urlpatterns = [
    path("v1/chat/completions", openai_api.chat_completions, name="openai-chat-completions"),
    path("v1/completions", openai_api.completions, name="openai-completions"),
    path("v1/models", openai_api.models, name="openai-models"),
    path("internal/v1/generate", openai_api.internal_generate, name="internal-generate"),
    path("healthz", openai_api.healthz, name="serving-healthz"),
    # Anything else: a JSON 404 in OpenAI's shape (DEBUG's 404 page would be HTML).
    re_path(r"^", openai_api.not_found),
]
