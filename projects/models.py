"""Projects (one product team's unit of work), their members' roles and their API clients.

The bottom layer of the Django apps: feedback and training point at Project; this app imports
neither of them.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey

# Scopes an API key may carry (SPEC §3). `import` is the data-management scope: bulk imports,
# snapshots, and the steering fields of a generation (votes_wanted, model_version).
SCOPES = ("generations:write", "votes:write", "generate", "import", "read")


class Project(models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    # Local directory (or hub id) of the model a project starts from; empty: the installation's
    # PROSPECT_BASE_MODEL.
    base_model = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in one project. What each role may do is the permissions of the Django group
    of the same name (see projects.roles), so an installation can adjust them in the admin."""

    class Role(models.TextChoices):
        ANNOTATOR = "annotator"
        ADMIN = "admin", "project admin"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_project_user")]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.project}"


class ApiClient(AbstractAPIKey):
    """A product app's key: stored as a hash only (djangorestframework-api-key), one project,
    a set of scopes, an optional expiry (expiry_date), revocation (revoked), last use."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="api_clients")
    scopes = models.JSONField(default=list)
    # A DRF rate like "100/s" or "5000/min"; empty: settings.PROSPECT_API_DEFAULT_RATE.
    rate = models.CharField(max_length=32, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API client"
        verbose_name_plural = "API clients"
        permissions = [("manage_api_clients", "Can create and revoke the project's API keys")]
