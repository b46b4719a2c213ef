"""The config tests start real workers too: the training tests' worker fixtures, shared."""

from tests.training.conftest import data_dir, start_worker  # noqa: F401
