"""The test suite's settings: Prospect's one settings module, with DEBUG asked for explicitly.

DEBUG defaults to off (production). The suite turns it on for what it starts itself (workers,
`manage.py` subprocesses inherit the environment) and for the dev SECRET_KEY; pytest-django still
runs each test with settings.DEBUG False, as Django's test runner does. Tests of the DEBUG-off
behaviour start their servers with DEBUG=0 and a SECRET_KEY of their own.
"""

import os

os.environ.setdefault("DEBUG", "1")
# The test process and the workers it starts (other PROSPECT_DATA_DIR, other database name) are
# one installation: they must agree on its id, which would otherwise be derived from those.
# Each pytest-xdist worker is an installation of its own, so the Celery keys its tests leave in a
# shared Redis database (REDIS_URL) never mix with another worker's.
_worker = os.environ.get("PYTEST_XDIST_WORKER")
os.environ.setdefault("PROSPECT_INSTALLATION_ID", f"prospect-tests-{_worker}" if _worker else "prospect-tests")

from config.settings import *  # noqa: E402,F401,F403
