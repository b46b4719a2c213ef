#!/usr/bin/env bash
# One run of the GPU benches on a CUDA machine (issue 8): installs the pinned requirements if torch
# with CUDA is missing, runs bench/gpu_speed.py (Qwen2.5-0.5B full FT + Qwen2.5-7B-shape LoRA, each
# against TRL) and writes its JSON line to ${OUT:-bench/out}/gpu_speed.json (stderr beside it).
#   bash scripts/gpu_bench.sh                     # about 10 minutes on an H200
#   GPU_BENCH_ARGS="--scenarios full" bash scripts/gpu_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
python=".venv/bin/python"
[ -x "$python" ] || python="python3"
if ! "$python" -c "import torch, trl, peft; assert torch.cuda.is_available()" 2>/dev/null; then
    "$python" -m pip install -q -r requirements.txt -r requirements-dev.txt
fi
"$python" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" >&2
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
# shellcheck disable=SC2086
"$python" bench/gpu_speed.py ${GPU_BENCH_ARGS:-} 2> "$out/gpu_speed.stderr" | tee "$out/gpu_speed.json"
