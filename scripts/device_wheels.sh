#!/usr/bin/env bash
# Wheels the lent CUDA machine lacks for bench/gpu_speed.py's TRL side (it has torch, transformers,
# accelerate, peft, pyarrow, pandas, xxhash and fsspec, but no trl or datasets, and no network),
# for its Python 3.12, into .whl/ (ignored by git; about 2 MB). Carry .whl to the device;
# scripts/device_run.sh installs whatever it finds there.
#   bash scripts/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls -l .whl
