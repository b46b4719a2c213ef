from django.urls import path
from drf_spectacular.utils import extend_schema

from training import api, openai_proxy, views


@extend_schema(exclude=True)  # the same operation as /api/v1/generate/: documented once
class LegacyGenerateView(api.GenerateView):
    """/api/v1/generate without the trailing slash, kept for clients written against it."""


app_name = "training"

urlpatterns = [
    # Staff pages.
    path("runs/", views.runs, name="runs"),
    path("runs/new/", views.retrain, name="retrain"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/progress.json", views.run_progress, name="run_progress"),
    path("runs/<int:run_id>/cancel/", views.cancel, name="cancel"),
    path("models/", views.versions, name="versions"),
    path("models/compare/", views.compare, name="compare"),
    path("models/compare/blind/", views.start_blind_comparison, name="start_blind_comparison"),
    path("models/rollback/", views.rollback, name="rollback"),
    path("models/<int:version_id>/promote/", views.promote, name="promote"),
    path("models/<int:version_id>/reject/", views.reject, name="reject"),
    # JSON API (token or session auth).
    path("api/v1/generate/", api.GenerateView.as_view(), name="api-generate"),
    # The old path without the trailing slash keeps working for clients written against it.
    path("api/v1/generate", LegacyGenerateView.as_view(), name="api-generate-legacy"),
    # The OpenAI-compatible API of the serving process, forwarded (streaming too).
    path("v1/<path:path>", openai_proxy.forward, name="openai-forward"),
]
