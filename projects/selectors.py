"""Reads of the projects app: which project a caller works in, and what a user may do there."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Permission
from django.utils.text import slugify

from projects.models import ApiClient, Membership, Project
from projects.roles import ROLE_GROUPS


class ProjectRequired(LookupError):
    """Several projects exist and the caller named none (or named one that does not exist)."""


def get_project(name_or_slug: str) -> Project:
    project = Project.objects.filter(name=name_or_slug).first() or Project.objects.filter(slug=name_or_slug).first()
    if project is None:
        names = ", ".join(Project.objects.values_list("name", flat=True)) or "none"
        raise ProjectRequired(f"no project named {name_or_slug!r} (projects: {names})")
    return project


def default_project() -> Project:
    """The project a caller means when it names none: the only one, else PROSPECT_DEFAULT_PROJECT."""
    only = list(Project.objects.all()[:2])
    if len(only) == 1:
        return only[0]
    named = Project.objects.filter(name=settings.PROSPECT_DEFAULT_PROJECT).first()
    if named is not None:
        return named
    if not only:
        # A fresh (or flushed) installation: its one project, as the migration creates it.
        return Project.objects.get_or_create(
            name=settings.PROSPECT_DEFAULT_PROJECT,
            defaults={"slug": slugify(settings.PROSPECT_DEFAULT_PROJECT) or "default"},
        )[0]
    names = ", ".join(Project.objects.values_list("name", flat=True))
    raise ProjectRequired(f"there are several projects ({names}): name one")


def resolve_project(project: Project | str | None) -> Project:
    """A Project from a Project, a name/slug, or None (the default project)."""
    if isinstance(project, Project):
        return project
    if project:
        return get_project(project)
    return default_project()


def projects_of(user) -> list[Project]:
    """The projects a user may open: all of them for the superuser, else those they belong to."""
    if not user.is_authenticated or not user.is_active:
        return []
    if user.is_superuser:
        return list(Project.objects.all())
    return list(Project.objects.filter(memberships__user=user).distinct())


def role_in(user, project: Project) -> str | None:
    if not user.is_authenticated or not user.is_active:
        return None
    return Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()


def role_permissions(role: str) -> set[str]:
    group = ROLE_GROUPS.get(role)
    if group is None:
        return set()
    return {
        f"{app}.{codename}"
        for app, codename in Permission.objects.filter(group__name=group).values_list(
            "content_type__app_label", "codename"
        )
    }


def has_project_perm(user, project: Project, perm: str) -> bool:
    """May `user` do the action that needs `perm` in `project`?"""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    role = role_in(user, project)
    return role is not None and perm in role_permissions(role)


def members(project: Project) -> list[Membership]:
    return list(Membership.objects.filter(project=project).select_related("user").order_by("role", "user__username"))


def api_clients(project: Project):
    return ApiClient.objects.filter(project=project).order_by("-created")
