"""Writes of the projects app: projects, members, API keys."""

from __future__ import annotations

from datetime import timedelta

from django.apps import apps as django_apps
from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from projects.authentication import forget_key_when_committed
from projects.models import SCOPES, ApiClient, Membership, Project
from projects.roles import GROUP_PERMISSIONS


def create_project(name: str, *, base_model: str = "") -> Project:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "a project needs a name"})
    slug = slugify(name)
    if not slug:
        raise ValidationError({"name": f"{name!r} has no letters or digits to make a URL slug from"})
    if Project.objects.filter(name=name).exists() or Project.objects.filter(slug=slug).exists():
        raise ValidationError({"name": f"a project named {name!r} (or with slug {slug!r}) already exists"})
    return Project.objects.create(name=name, slug=slug, base_model=base_model)


def parse_scopes(scopes) -> list[str]:
    """['read', ...] from 'read,votes:write' or a list; ValidationError naming an unknown scope."""
    if isinstance(scopes, str):
        scopes = [s.strip() for s in scopes.split(",")]
    scopes = [s for s in (scopes or []) if s]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValidationError({"scopes": f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}"})
    if not scopes:
        raise ValidationError({"scopes": f"give at least one scope of {', '.join(SCOPES)}"})
    return sorted(set(scopes), key=SCOPES.index)


def create_api_key(
    project: Project, *, scopes, name: str = "", expires_days: int | None = None, rate: str = "", created_by=None
) -> tuple[ApiClient, str]:
    """(client, key): the key in clear is returned here once and stored only as a hash."""
    scopes = parse_scopes(scopes)
    if expires_days is not None and expires_days < 1:
        raise ValidationError({"expires_days": "must be at least 1"})
    expiry = timezone.now() + timedelta(days=expires_days) if expires_days else None
    if rate:
        validate_rate(rate)
    return ApiClient.objects.create_key(
        project=project,
        scopes=scopes,
        name=name or f"{project.slug} key",
        expiry_date=expiry,
        rate=rate,
        created_by=created_by,
    )


def validate_rate(rate: str) -> None:
    count, _, period = rate.partition("/")
    if not count.isdigit() or not period or period[0] not in "smhd":
        raise ValidationError({"rate": f"{rate!r} is not a rate like 100/s, 600/min, 10000/hour or 100000/day"})


def revoke_api_key(client: ApiClient) -> None:
    ApiClient.objects.filter(pk=client.pk).update(revoked=True)
    # This process refuses the key from its next request on; others within the cache's time.
    forget_key_when_committed(client.pk)


def set_membership(project: Project, user, role: str) -> Membership:
    if role not in Membership.Role.values:
        raise ValidationError({"role": f"unknown role {role!r}; one of {', '.join(Membership.Role.values)}"})
    with transaction.atomic():
        membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


def remove_membership(project: Project, user) -> None:
    Membership.objects.filter(project=project, user=user).delete()


def ensure_installation_defaults(sender=None, **_signal_kwargs) -> None:
    """After every `migrate` (and a test database flush): a project exists, and the role groups
    exist with their permissions. Never changes a group that is already there (an installation
    may have adjusted its permissions in the admin)."""
    if sender is not None and sender is not list(django_apps.get_app_configs())[-1]:
        return  # not the last app yet: some permissions do not exist yet
    if not Project.objects.exists():
        name = settings.PROSPECT_DEFAULT_PROJECT
        Project.objects.create(name=name, slug=slugify(name) or "default")
    for group_name, perms in GROUP_PERMISSIONS.items():
        group, created = Group.objects.get_or_create(name=group_name)
        if not created and group.permissions.exists():
            continue
        for perm in perms:
            app_label, codename = perm.split(".")
            permission = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
            if permission is not None:
                group.permissions.add(permission)
