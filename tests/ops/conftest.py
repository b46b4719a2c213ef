from __future__ import annotations

import pytest

from tests.ops.production_server import start_production_server, stop


@pytest.fixture
def production_server(tmp_path):
    server = start_production_server(tmp_path)
    yield server
    stop(server)
