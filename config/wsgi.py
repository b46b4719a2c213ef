"""The WSGI application, as every server of Prospect loads it (granian in production, runserver in
the demo).

Both servers copy the process's environment variables into every request's WSGI environ, so
`request.META` held DATABASE_URL with its password, the broker URL and the rest of the configuration,
and Django's error reports print META with only names like *KEY* or *PASS* masked. The wrapper takes
out every variable the server inherited, and keeps what WSGI and CGI define for a request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# What a server sets for each request (PEP 3333, CGI 1.1): kept even when the environment has it too.
REQUEST_KEYS = frozenset(
    {
        "REQUEST_METHOD",
        "SCRIPT_NAME",
        "PATH_INFO",
        "QUERY_STRING",
        "CONTENT_TYPE",
        "CONTENT_LENGTH",
        "SERVER_NAME",
        "SERVER_PORT",
        "SERVER_PROTOCOL",
        "SERVER_SOFTWARE",
        "GATEWAY_INTERFACE",
        "REMOTE_ADDR",
        "REMOTE_HOST",
        "REMOTE_PORT",
        "HTTPS",
    }
)


def without_server_environment(app: Callable, server_environment: Mapping[str, str] | None = None) -> Callable:
    """APP, called with the server's own environment variables taken out of each request's environ.

    A variable is taken out only while it still has the server's value, so a request header that
    happens to share a name with one (HTTP_PROXY, say) but not its value reaches the app."""
    inherited = tuple(
        (key, value)
        for key, value in (os.environ if server_environment is None else server_environment).items()
        if key not in REQUEST_KEYS
    )

    def application(environ, start_response):
        for key, value in inherited:
            if environ.get(key) == value:
                del environ[key]
        return app(environ, start_response)

    application.wrapped = app
    return application


application = without_server_environment(get_wsgi_application())
