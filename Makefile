# The two commands: `make demo` runs the whole loop on embedded defaults; `make test` runs the suite.
.PHONY: setup demo test lint bench-web bench-speed bench-quality bench-gpu

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/python manage.py demo

# Two pytest-xdist workers: the suite waits on subprocesses, servers and the browser about half the
# time, so a second worker keeps both cores busy. Each worker has its own test database (pytest-django),
# Redis database and installation id (tests/helpers.py, tests/settings.py). `--dist load` hands tests
# out in collection order, so each worker keeps pytest-django's order (database tests before the
# transactional ones that flush); `loadscope` broke it. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: setup
	.venv/bin/python -m pytest -n $(TEST_WORKERS) --dist load

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

bench-web: setup
	.venv/bin/python bench/web_load.py

bench-speed: setup
	.venv/bin/python bench/speed_vs_trl.py

bench-quality: setup
	.venv/bin/python bench/quality.py

bench-gpu: setup
	.venv/bin/python bench/gpu_speed.py
