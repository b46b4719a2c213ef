#!/usr/bin/env bash
# One session on a lent CUDA machine (issues 8 and 14), with no network there: the installed
# versions, then bench/scaleout_gpu.py (each shipped accelerate config on one GPU), then
# bench/gpu_speed.py (Prospect vs TRL), each under its own time limit; every JSON line lands in
# $OUT as soon as it exists, so a cut-off run still reports what it finished.
#   OUT=/tmp/o bash scripts/device_run.sh
#   SCALEOUT_ARGS=--tiny GPU_SPEED_ARGS="--tiny" bash scripts/device_run.sh     # CPU rehearsal
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
python=python3
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
"$python" - > "$out/versions.json" <<'PY'
import importlib, json
found = {}
for name in ("torch", "transformers", "accelerate", "peft", "trl", "safetensors"):
    try:
        found[name] = importlib.import_module(name).__version__
    except Exception as error:  # noqa: BLE001 - a missing package is a finding, not a failure
        found[name] = f"missing: {error}"
import torch
found["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(json.dumps(found))
PY
cat "$out/versions.json"
# shellcheck disable=SC2086
timeout "${SCALEOUT_SECONDS:-170}" "$python" bench/scaleout_gpu.py ${SCALEOUT_ARGS:-} 2> "$out/scaleout.stderr" \
    | tee "$out/scaleout.json"
tail -c 4000 "$out/scaleout.stderr"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# shellcheck disable=SC2086
timeout "${SPEED_SECONDS:-330}" "$python" bench/gpu_speed.py ${GPU_SPEED_ARGS:---scenarios full --examples 512} \
    2> "$out/gpu_speed.stderr" | tee "$out/gpu_speed.json"
tail -c 4000 "$out/gpu_speed.stderr"
