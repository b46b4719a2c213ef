"""The `--project NAME` option every command shares (default: the only project, else PROSPECT_DEFAULT_PROJECT)."""

from __future__ import annotations

from django.core.management.base import CommandError

from projects.models import Project
from projects.selectors import ProjectRequired, resolve_project


def add_project_argument(parser) -> None:
    parser.add_argument(
        "--project",
        default=None,
        help="project name or slug (default: the only project, else PROSPECT_DEFAULT_PROJECT)",
    )


def project_option(options) -> Project:
    try:
        return resolve_project(options.get("project"))
    except ProjectRequired as exc:
        raise CommandError(str(exc)) from None
