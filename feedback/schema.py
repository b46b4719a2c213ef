"""OpenAPI description of the feedback API's token authentication (drf-spectacular extension)."""
from drf_spectacular.authentication import TokenScheme


class CachedTokenScheme(TokenScheme):
    # Same header as DRF's token scheme; its own name, because the schema registry refuses two
    # different classes under one name.
    target_class = "feedback.authentication.CachedTokenAuthentication"
    name = "feedbackTokenAuth"
    match_subclasses = True
    priority = 1
