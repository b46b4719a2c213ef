"""A WSGI app for tests/ops/test_wsgi_environ.py: lists the environ keys it was called with, as
the server gave them (/raw) or through config.wsgi's wrapper (any other path)."""

from __future__ import annotations

import json

from config.wsgi import without_server_environment


def echo(environ, start_response):
    keys = sorted(key for key in environ if not key.startswith("wsgi."))
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(keys).encode()]


wrapped_echo = without_server_environment(echo)


def application(environ, start_response):
    return (echo if environ.get("PATH_INFO") == "/raw" else wrapped_echo)(environ, start_response)
