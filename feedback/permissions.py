"""Who may see which page. A signed-in user without the right role gets 403, never a login loop."""
from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

from feedback.selectors import is_annotator


def _role_required(allowed, denial: str):
    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not allowed(request.user):
                raise PermissionDenied(denial)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


annotator_required = _role_required(is_annotator, "annotators only")
staff_required = _role_required(lambda user: user.is_active and user.is_staff, "staff only")
