"""Runner-level scale-out tests reuse the loop back end's fixtures (real database rows, the demo
model as the active version, a private DATA_DIR)."""
from tests.loop_backend.conftest import data_dir, demo_loop, loop_redis, start_worker, wait_for  # noqa: F401
