"""Prospect's vLLM backend against a real vLLM on a CUDA machine: load, generate, swap, unload.

For a session with a GPU (an H200 is plenty; nothing is downloaded: the model and adapters are
built locally, random weights, so the machine needs no network):
1. builds a tiny Llama (the demo tokenizer, 2 layers, head size 64) and two random LoRA adapters
   (peft, r=8 on q/v), plus a copy of the base as a "full-weight version";
2. starts `vllm serve <base> --enable-lora` (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True) and waits;
3. drives training.vllm_backend.VLLMServer, the lifecycle Prospect's VLLMBackend runs on:
   version 1 (adapter A) loaded and asked; version 2 (adapter B) promoted, version 1 retired ->
   B loaded, A unloaded; B's files rewritten -> loaded under a new name, the old one unloaded; a
   streamed completion; the full-weight version -> refused with the restart instructions
   (NeedsReload); checks that A, B and the base answer differently (the adapters really apply);
4. prints ONE JSON line: timings (vLLM start, each load/unload, first completion after a load,
   completions/s over 64 requests), the adapter events, and every check's outcome.

    pip install vllm            # on the GPU machine (or have it installed)
    .venv/bin/python bench/serving_vllm_gpu.py
    .venv/bin/python bench/serving_vllm_gpu.py --tiny   # CPU, no vLLM: the same driver against
                                                        # the STAND-IN server (tests/training/vllm_stand_in.py)

Exit code 0 when every check passed, 1 when one failed, 2 when vLLM (or CUDA) is missing (the JSON
line then says "skipped" and why).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RANK = 8


def log(message: str) -> None:
    print(f"[serving_vllm_gpu] {message}", file=sys.stderr, flush=True)


def setup_django(folder: Path) -> None:
    # VLLMServer lives next to the Django backend class; settings load, no database is touched.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("PROSPECT_DATA_DIR", str(folder / "data"))
    import logging

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise


def build_models(folder: Path) -> tuple[str, str, str, str]:
    """(base, adapter A, adapter B, full-weight copy) directories with random weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.kto.demo import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    base = folder / "base"
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    adapters = []
    for name, seed in (("adapter-a", 1), ("adapter-b", 2)):
        torch.manual_seed(seed)
        lora = LoraConfig(r=RANK, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(LlamaForCausalLM.from_pretrained(base), lora)
        with torch.no_grad():  # large enough to change greedy outputs of a random model
            for parameter_name, parameter in model.named_parameters():
                if "lora_" in parameter_name:
                    parameter.mul_(50.0)
        model.save_pretrained(folder / name)
        adapters.append(str(folder / name))
    full = folder / "full-weights"
    shutil.copytree(base, full)
    return str(base), adapters[0], adapters[1], str(full)


def fake_models(folder: Path) -> tuple[str, str, str, str]:
    """--tiny: adapter-shaped folders (the stand-in reads only adapter_config.json)."""
    paths = []
    for name in ("adapter-a", "adapter-b"):
        (folder / name).mkdir(parents=True)
        (folder / name / "adapter_config.json").write_text(json.dumps({"r": RANK}))
        (folder / name / "adapter_model.safetensors").write_bytes(name.encode() * 100)
        paths.append(str(folder / name))
    return "stand-in/base", paths[0], paths[1], str(folder / "full-weights")


def start_vllm(base: str, port: int, folder: Path) -> tuple[subprocess.Popen, float]:
    env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", base, "--port", str(port),
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", str(RANK), "--max-model-len", "512",
        "--gpu-memory-utilization", "0.3", "--enforce-eager", "--dtype", "float16",
    ]  # fmt: skip
    log_file = open(folder / "vllm.log", "wb")
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    import httpx

    deadline = started + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("vllm exited:\n" + (folder / "vllm.log").read_text()[-4000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    raise RuntimeError("vllm did not become healthy in 900 s:\n" + (folder / "vllm.log").read_text()[-4000:])


def drive(url: str, base: str, adapter_a: str, adapter_b: str, full: str, real: bool = True) -> dict:
    """The lifecycle, timed; returns the report's fields (checks: name -> bool)."""
    from training.vllm_backend import NeedsReload, VLLMServer, Weights

    server = VLLMServer(url, max_adapters=2, timeout=120)
    retired: set[int] = set()

    def servable(ids: list[int]) -> set[int]:
        return {version_id for version_id in ids if version_id not in retired}

    timings, checks = {}, {}
    prompt = "What is 12+7?"
    version_a, version_b = Weights(1, adapter_a, True, base), Weights(2, adapter_b, True, base)

    clock = time.perf_counter()
    name_a = server.model_for(version_a, servable)
    timings["load_a_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    (answer_a,) = server.complete(name_a, [prompt], max_tokens=16, temperature=0)
    timings["first_completion_after_load_s"] = time.perf_counter() - clock
    base_name = server.base_model()["id"]
    (answer_base,) = server.complete(base_name, [prompt], max_tokens=16, temperature=0)

    retired.add(1)  # version 2 promoted, version 1 retired
    clock = time.perf_counter()
    name_b = server.model_for(version_b, servable)
    timings["swap_to_b_s"] = time.perf_counter() - clock  # unload A + load B
    (answer_b,) = server.complete(name_b, [prompt], max_tokens=16, temperature=0)
    listed = {entry["id"] for entry in server.served_models()}
    checks["b_loaded_a_unloaded"] = name_b in listed and name_a not in listed
    checks["names_carry_version_and_hash"] = name_a.startswith("prospect-p0-v1-") and name_b.startswith(
        "prospect-p0-v2-"
    )

    # Throughput on the loaded adapter (sequential requests: the backend's own call pattern).
    count = 64
    clock = time.perf_counter()
    server.complete(name_b, [f"What is {i}+{i}?" for i in range(count)], max_tokens=16, temperature=0)
    timings["completions_per_s"] = count / (time.perf_counter() - clock)
    pieces = list(server.stream(name_b, prompt, max_tokens=16, temperature=0))
    checks["stream_equals_completion"] = "".join(pieces) == answer_b

    # Version 2's files rewritten in place: a new name, the old one unloaded.
    weights_file = Path(adapter_b) / "adapter_model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes())  # same bytes: the name must NOT change
    checks["same_files_same_name"] = server.model_for(version_b, servable) == name_b
    shutil.copy(Path(adapter_a) / "adapter_model.safetensors", weights_file)  # other weights
    clock = time.perf_counter()
    name_b2 = server.model_for(version_b, servable)
    timings["reload_rewritten_s"] = time.perf_counter() - clock
    listed = {entry["id"] for entry in server.served_models()}
    checks["rewritten_gets_new_name"] = name_b2 != name_b and name_b2 in listed and name_b not in listed
    (answer_b2,) = server.complete(name_b2, [prompt], max_tokens=16, temperature=0)
    if real:  # the stand-in answers with the model's name, not from weights
        checks["rewritten_answers_like_a"] = answer_b2 == answer_a  # it now holds A's weights

    try:
        server.model_for(Weights(3, full, False, base), servable)
        checks["full_weights_refused_with_instructions"] = False
    except NeedsReload as exc:
        checks["full_weights_refused_with_instructions"] = f"vllm serve {full}" in str(exc)
    checks["adapters_change_answers"] = len({answer_a, answer_b, answer_base}) == 3
    return {
        "timings": {key: round(value, 4) for key, value in timings.items()},
        "events": server.events,
        "answers": {"base": answer_base, "a": answer_a, "b": answer_b},
        "checks": checks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU dry run against the stand-in server, no vLLM")
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="prospect-vllm-bench-"))
    setup_django(folder)
    from tests.helpers import free_port

    port = options.port or free_port()
    line: dict = {"bench": "serving_vllm_gpu", "mode": "tiny (stand-in, not vLLM)" if options.tiny else "vllm"}
    if options.tiny:
        from tests.training.vllm_stand_in import StandInVLLM

        base, adapter_a, adapter_b, full = fake_models(folder)
        with StandInVLLM(base, port=port) as stand_in:
            line.update(drive(stand_in.url, base, adapter_a, adapter_b, full, real=False))
        # The stand-in echoes the model name: answers differ by construction, streaming is chunked.
    else:
        try:
            import torch
            import vllm
        except ImportError as exc:
            print(json.dumps({**line, "skipped": f"vllm is not installed ({exc}): pip install vllm"}))
            return 2
        if not torch.cuda.is_available():
            print(json.dumps({**line, "skipped": "no CUDA device"}))
            return 2
        line.update(vllm=vllm.__version__, gpu=torch.cuda.get_device_name(0))
        base, adapter_a, adapter_b, full = build_models(folder)
        process, started_s = start_vllm(base, port, folder)
        try:
            line.update(drive(f"http://127.0.0.1:{port}", base, adapter_a, adapter_b, full))
            line["timings"]["vllm_start_s"] = round(started_s, 1)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    line["passed"] = all(line["checks"].values())
    print(json.dumps(line), flush=True)
    return 0 if line["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
