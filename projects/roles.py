"""What each role may do in a project, as Django permissions held by one group per role.

A member's role names a group (annotators / project admins); the permissions of that group are
what the member may do in that project, and nowhere else. The installation's superuser may do
everything everywhere. `is_staff` alone grants nothing in a project (only the Django admin's door).
"""

from __future__ import annotations

ANNOTATORS_GROUP = "annotators"
PROJECT_ADMINS_GROUP = "project admins"

# Every action a page, endpoint or command checks, and the permission it needs.
RATE = "feedback.add_vote"
VIEW_DASHBOARD = "feedback.view_datasetsnapshot"
SNAPSHOT = "feedback.add_datasetsnapshot"
IMPORT = "feedback.add_importbatch"
VIEW_RUNS = "training.view_trainingrun"
START_RUN = "training.add_trainingrun"
CANCEL_RUN = "training.change_trainingrun"
VIEW_MODELS = "training.view_modelversion"
CHANGE_MODELS = "training.change_modelversion"  # promote, roll back, reject
MANAGE_KEYS = "projects.manage_api_clients"
MANAGE_MEMBERS = "projects.change_membership"

ANNOTATOR_PERMISSIONS = (RATE,)
PROJECT_ADMIN_PERMISSIONS = (
    RATE,
    VIEW_DASHBOARD,
    SNAPSHOT,
    IMPORT,
    VIEW_RUNS,
    START_RUN,
    CANCEL_RUN,
    VIEW_MODELS,
    CHANGE_MODELS,
    MANAGE_KEYS,
    MANAGE_MEMBERS,
)

ROLE_GROUPS = {"annotator": ANNOTATORS_GROUP, "admin": PROJECT_ADMINS_GROUP}
GROUP_PERMISSIONS = {ANNOTATORS_GROUP: ANNOTATOR_PERMISSIONS, PROJECT_ADMINS_GROUP: PROJECT_ADMIN_PERMISSIONS}
