# The two commands: `make demo` runs the whole loop on embedded defaults; `make test` runs the suite.
.PHONY: setup demo test lint bench-web bench-speed bench-quality bench-gpu

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/python manage.py demo

test: setup
	.venv/bin/python -m pytest

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
