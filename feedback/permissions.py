"""Who may see which page. A signed-in user without the right role in the project gets 403, never a
login loop. Roles and their permissions: projects.roles."""

from __future__ import annotations

from projects import roles
from projects.web import project_permission_required

annotator_required = project_permission_required(roles.RATE, "annotators of this project only")
dashboard_required = project_permission_required(roles.VIEW_DASHBOARD, "project admins only")
snapshot_required = project_permission_required(roles.SNAPSHOT, "project admins only")
import_required = project_permission_required(roles.IMPORT, "project admins only")
