from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # Each app mounts its pages and its /api/v1/ routes in its own urls module.
    path("", include("feedback.urls")),
    path("", include("training.urls")),
]
