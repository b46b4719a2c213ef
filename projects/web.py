"""The project a page works in, and the per-project permission check of every page.

The project comes from `?project=NAME` (remembered in the session, which is what the switcher in
the header sets), else the session, else the user's only project, else the installation's default
project. A single-team installation therefore never needs the parameter.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import Http404

from projects.models import Project
from projects.selectors import ProjectRequired, has_project_perm, projects_of, resolve_project

SESSION_PROJECT = "prospect_project_id"


def page_project(request) -> Project:
    mine = projects_of(request.user)
    name = request.GET.get("project")
    if name:
        try:
            project = resolve_project(name)
        except ProjectRequired:
            raise Http404(f"no project {name!r}") from None
        request.session[SESSION_PROJECT] = project.pk
        return project
    remembered = request.session.get(SESSION_PROJECT)
    for project in mine:
        if project.pk == remembered:
            return project
    if len(mine) == 1:
        return mine[0]
    try:
        return resolve_project(None)
    except ProjectRequired:
        if mine:
            return mine[0]
        raise


def project_permission_required(perm: str, denial: str = "you lack the role this page needs in this project"):
    """Anonymous → login; a user without `perm` in the page's project → 403. Sets request.project."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            try:
                project = page_project(request)
            except ProjectRequired as exc:
                raise PermissionDenied(str(exc)) from None
            if not has_project_perm(request.user, project, perm):
                raise PermissionDenied(denial)
            request.project = project
            return view(request, *args, **kwargs)

        return wrapper

    return decorator
