from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.urls import reverse


class StaffOnlyAdminMiddleware:
    """A signed-in non-staff user gets 403 anywhere under the Django admin.

    Django's admin would answer them with its login form instead, which reads like "wrong
    password" to an annotator and invites them to try other credentials. Anonymous visitors
    still get the admin's login form.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.admin_prefix = reverse("admin:index")

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (
            request.path.startswith(self.admin_prefix)
            and user is not None
            and user.is_authenticated
            and not user.is_staff
        ):
            raise PermissionDenied("the admin is for staff only")
        return self.get_response(request)
