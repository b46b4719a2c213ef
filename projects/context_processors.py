"""What the header of every page needs: the page's project, the user's other projects (the
switcher), and which links their role there opens."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.http import Http404

from projects import roles
from projects.selectors import ProjectRequired, projects_of, role_in, role_permissions
from projects.web import page_project


def project_header(request) -> dict:
    user = getattr(request, "user", None)
    # An API page rendered for a key (DRF's request.user is then the key's ApiCaller) has no header.
    if not isinstance(user, AbstractBaseUser) or not user.is_authenticated:
        return {}
    mine = projects_of(user)
    project = getattr(request, "project", None)
    if project is None and mine:
        try:
            project = page_project(request)
        except (ProjectRequired, Http404):
            project = mine[0]
    if project is None:
        return {"my_projects": mine}
    # One role lookup for all the links (has_project_perm would look it up per link).
    perms = None if user.is_superuser else role_permissions(role_in(user, project) or "")
    allowed = (lambda perm: True) if perms is None else perms.__contains__
    return {
        "current_project": project,
        "my_projects": mine,
        "can_rate": allowed(roles.RATE),
        "can_admin_project": allowed(roles.VIEW_DASHBOARD),
        "can_view_runs": allowed(roles.VIEW_RUNS),
        "can_view_models": allowed(roles.VIEW_MODELS),
        "can_manage_keys": allowed(roles.MANAGE_KEYS),
        "can_manage_members": allowed(roles.MANAGE_MEMBERS),
    }
