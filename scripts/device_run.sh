#!/usr/bin/env bash
# One session on a lent CUDA machine (issue 8), which has no network: the wheels carried in .whl
# (scripts/device_wheels.sh: trl and datasets for the TRL side), the installed versions, then
# bench/gpu_speed.py — Prospect's default, one run per untried lever (elementwise: the
# --checkpoint-policy that keeps matmul outputs, half the activations at no matmul recompute), a profiled run (torch.profiler
# over 3 steps: where the loop's time goes), the default without prefix sharing (and so without mismatched
# sequences in the call with gradient), and TRL on the same data —
# under a time limit. Every JSON line lands in $OUT as soon as it exists, so a cut-off run still
# reports what it finished. RUN_SCALEOUT=1 also runs bench/scaleout_gpu.py first (issue 14's proof).
#   bash scripts/device_wheels.sh                        # here, once: then carry .whl
#   OUT=/tmp/o bash scripts/device_run.sh                # there
#   GPU_SPEED_ARGS="--tiny --scenarios full" OUT=/tmp/o bash scripts/device_run.sh    # CPU rehearsal
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
python=python3
if [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
if compgen -G ".whl/*.whl" > /dev/null && ! "$python" -c "import trl, datasets" 2> /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$python" - > "$out/versions.json" <<'PY'
import importlib, json
found = {}
for name in ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "pyarrow", "safetensors", "triton"):
    try:
        found[name] = importlib.import_module(name).__version__
    except Exception as error:  # noqa: BLE001 - a missing package is a finding, not a failure
        found[name] = f"missing: {error}"
import torch
found["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(json.dumps(found))
PY
cat "$out/versions.json"
if [ "${RUN_SCALEOUT:-0}" = 1 ]; then
    # shellcheck disable=SC2086
    timeout "${SCALEOUT_SECONDS:-170}" "$python" bench/scaleout_gpu.py ${SCALEOUT_ARGS:-} 2> "$out/scaleout.stderr" \
        | tee "$out/scaleout.json"
    tail -c 3000 "$out/scaleout.stderr"
fi
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
backend=inductor
if [ -n "${GPU_SPEED_ARGS:-}" ] && [[ "$GPU_SPEED_ARGS" == *--tiny* ]]; then backend=aot_eager; fi  # CPU rehearsal: inductor would build C++ for minutes
# Most telling first (a run cut off by the time limit keeps what it finished): the memory lever,
# compilation, then the rest; elementwise_8k is the memory/speed point nearest TRL's peak; auto_18g
# lets --checkpoint-policy auto fit TRL's 2026-11-27 peak (18 GiB), auto the whole card (its predicted
# peak against the measured one).
variants=(--variant 'elementwise={"gradient_checkpointing": true, "checkpoint_policy": "elementwise"}'
    --variant 'auto_18g={"gradient_checkpointing": true, "checkpoint_policy": "auto", "memory_limit_gib": 18}'
    --variant "compile={\"compile_backend\": \"$backend\"}"
    --variant 'checkpointing={"gradient_checkpointing": true}'
    --variant 'profile={"profile_steps": 3}'
    --variant 'elementwise_8k={"gradient_checkpointing": true, "checkpoint_policy": "elementwise", "token_budget": 8192}'
    --variant "compile_checkpointing={\"compile_backend\": \"$backend\", \"gradient_checkpointing\": true}"
    --variant 'no_prefix_sharing={"prefix_sharing": false}'
    --variant 'auto={"gradient_checkpointing": true, "checkpoint_policy": "auto"}')
# shellcheck disable=SC2206
speed_args=(${GPU_SPEED_ARGS:---scenarios full --examples 512 --warmup} "${variants[@]}")
timeout "${SPEED_SECONDS:-420}" "$python" bench/gpu_speed.py "${speed_args[@]}" 2> "$out/gpu_speed.stderr" \
    | tee "$out/gpu_speed.json"
tail -c 4000 "$out/gpu_speed.stderr"
