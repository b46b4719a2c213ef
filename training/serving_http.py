"""The serving process's WSGI application and server (`manage.py serve_models`).

A Django handler of its own: the serving URLs (training/serving_urls.py) and none of the web app's
middleware (sessions, CSRF, TLS redirects, login lockout), since its callers are the web app and
product backends with API keys. Threads answer requests concurrently; each project's backend
serialises the model work itself (training.serving).
"""

from __future__ import annotations

import functools
import logging

from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import WSGIServer, run
from django.core.signals import got_request_exception

from training.openai_api import server_error

logger = logging.getLogger("prospect.serving")

SERVING_URLCONF = "training.serving_urls"


class ServingHandler(WSGIHandler):
    """Django's WSGI handler resolving against the serving URLs, with no middleware."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        get_response = self._get_response

        def with_serving_urls(request):
            request.urlconf = SERVING_URLCONF  # read by the URL resolver
            try:
                return get_response(request)
            except Exception:
                # JSON in OpenAI's shape, DEBUG or not (Django's debug page would be HTML).
                logger.exception("serving: %s %s failed", request.method, request.path)
                got_request_exception.send(sender=None, request=request)
                return server_error(request)

        self._middleware_chain = with_serving_urls


@functools.cache
def application() -> ServingHandler:
    return ServingHandler()


def serve(host: str, port: int) -> None:
    """Answer on host:port until interrupted (one thread per connection)."""
    run(host, port, application(), ipv6=":" in host, threading=True, server_cls=WSGIServer)
