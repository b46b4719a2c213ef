"""Serving benchmark: /v1/chat/completions through the serving process vs the backend in-process,
and the time from "promote" to the first completion served by the new version.

What it does (bounded in time; nothing here is a test):
1. A fresh database (BENCH_DATABASE_URL, default Postgres `serving_bench`), migrated; the demo
   model (cached build) as the active version of project `demo`; an API key with scope `generate`.
2. The peer, in this process: the same work as one request of the API minus HTTP, auth and JSON
   (route with training.routing, generate with the project's backend, store the Generation).
3. `manage.py serve_models` as a child process, and the web server (config.web_server, forwarding /v1/) as
   another; C keep-alive clients send chat completions (max_tokens 8, greedy, distinct demo
   prompts). The three modes run in alternating slices (--rounds) for --seconds each in all, with
   the same torch thread count: requests/s, p50/p99 latency, overhead ratios vs the peer.
4. Promotes a copy of the demo model (another directory, so it must be loaded) and sends requests
   until one is answered by it: seconds from the promote call to that first completion.
Ends with one JSON line.

    .venv/bin/python bench/serving.py [--clients 4] [--seconds 10] [--max-tokens 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import free_port  # noqa: E402  (after the repository is importable)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/serving_bench"


def log(message: str) -> None:
    print(f"[serving] {message}", file=sys.stderr, flush=True)


def fresh_database(url: str) -> None:
    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres", query="").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(latencies: list[float], seconds: float) -> dict:
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / seconds, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
    }


def drive(clients: int, seconds: float, one_request) -> tuple[list[float], int, float]:
    """`clients` threads calling one_request(i) back to back for `seconds`: (latencies, errors, wall seconds)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        count = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                one_request(index * 100_000 + count)
            except Exception as exc:  # counted, reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            finally:
                count += 1
            with lock:
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        log(f"first error: {errors[0]}")
    return latencies, len(errors), time.monotonic() - started


def wait_for(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternate the three modes this many times (fair under noise)"
    )
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads, same in both processes")
    options = parser.parse_args()

    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    fresh_database(database_url)
    data_dir = Path(tempfile.mkdtemp(prefix="prospect-serving-bench-"))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url,
        DEBUG="1",
        PROSPECT_DATA_DIR=str(data_dir),
        PROSPECT_INSTALLATION_ID="serving-bench",
    )
    serving_port, web_port = free_port(), free_port()
    os.environ["PROSPECT_SERVING_URL"] = f"http://127.0.0.1:{serving_port}"
    import django

    django.setup()
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from projects.selectors import default_project
    from projects.services import create_api_key
    from training import registry
    from training.kto.demo import demo_prompts
    from training.kto.testing import get_or_build_demo_model
    from training.models import ModelVersion
    from training.routing import version_for_request
    from training.serving import get_backend, store_completions

    model_dir = get_or_build_demo_model()
    project = default_project()
    active = registry.ensure_base_version(model_dir, project=project)
    _, key = create_api_key(project, scopes="generate")
    prompts = [[{"role": "user", "content": text}] for text in demo_prompts(200, seed=1, split="heldout")]
    log(f"project {project.name}, active {active.name}; {options.clients} clients x {options.seconds}s each")

    # --- the peer: the backend in this process ---------------------------------------------------
    import torch

    torch.set_num_threads(options.torch_threads)
    backend = get_backend(project)
    backend.generate([prompts[0]], version=active, max_new_tokens=options.max_tokens)  # load once

    def in_process(i: int) -> None:
        prompt = prompts[i % len(prompts)]
        version = version_for_request(project)
        (text,) = backend.generate([prompt], version=version, max_new_tokens=options.max_tokens, temperature=0)
        if text.strip():
            store_completions(project, version, [prompt], [text], source="bench")

    # --- the serving process and the web app --------------------------------------------------------
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(options.torch_threads))
    logs = {name: open(data_dir / f"{name}.log", "wb") for name in ("serving", "web")}
    children = [
        subprocess.Popen(
            [sys.executable, "manage.py", "serve_models", "--port", str(serving_port)],
            cwd=ROOT, env=env, stdout=logs["serving"], stderr=subprocess.STDOUT, start_new_session=True,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "config.web_server", "--port", str(web_port), "--workers", "1",
             "--threads", str(options.clients * 2)],
            cwd=ROOT, env=env, stdout=logs["web"], stderr=subprocess.STDOUT, start_new_session=True,
        ),
    ]  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{serving_port}/healthz")
        wait_for(f"http://127.0.0.1:{web_port}/healthz")
        modes = {"in_process": in_process}
        for name, base in (("serving_process", serving_port), ("via_web", web_port)):
            local = threading.local()

            def over_http(i: int, base=base, local=local) -> None:
                if not hasattr(local, "client"):
                    local.client = httpx.Client(
                        base_url=f"http://127.0.0.1:{base}", headers={"Authorization": f"Bearer {key}"}, timeout=120
                    )
                body = {
                    "model": project.name,
                    "messages": prompts[i % len(prompts)],
                    "max_tokens": options.max_tokens,
                    "temperature": 0,
                }
                response = local.client.post("/v1/chat/completions", json=body)
                response.raise_for_status()

            over_http(0)  # the serving process loads the model on its first request
            modes[name] = over_http
        # Alternating slices: the machine's load changes over time, each mode sees the same share.
        collected = {name: ([], 0, 0.0) for name in modes}
        for round_index in range(options.rounds):
            for name, one_request in modes.items():
                latencies, errors, wall = drive(options.clients, options.seconds / options.rounds, one_request)
                before = collected[name]
                collected[name] = (before[0] + latencies, before[1] + errors, before[2] + wall)
            log(f"round {round_index + 1}/{options.rounds} done")
        results = {}
        for name, (latencies, errors, wall) in collected.items():
            results[name] = {**summary(latencies, wall), "errors": errors}
            log(f"{name}: {results[name]}")

        # --- promote -> first completion of the new version -------------------------------------
        copy = data_dir / "promoted-model"
        shutil.copytree(model_dir, copy)
        newer = ModelVersion.objects.create(
            project=project, name="promoted", base_model=model_dir, artifact_path=str(copy), parent=active
        )
        client = httpx.Client(base_url=f"http://127.0.0.1:{serving_port}", headers={"Authorization": f"Bearer {key}"})
        body = {"model": project.name, "messages": prompts[0], "max_tokens": options.max_tokens, "temperature": 0}
        started = time.perf_counter()
        registry.promote(newer, reason="bench")
        promoted_at = time.perf_counter()
        requests_until = 0
        while True:
            requests_until += 1
            answer = client.post("/v1/chat/completions", json=body).json()
            if answer.get("prospect_model_version") == newer.name:
                break
        first_served = time.perf_counter()
    finally:
        for child in children:
            os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            child.wait(timeout=30)

    peer = results["in_process"]
    line = {
        "bench": "serving",
        "clients": options.clients,
        "seconds_each": options.seconds,
        "max_tokens": options.max_tokens,
        "torch_threads": options.torch_threads,
        **results,
        "overhead_p50_serving_vs_in_process": round(results["serving_process"]["p50_ms"] / peer["p50_ms"], 2),
        "overhead_p50_via_web_vs_in_process": round(results["via_web"]["p50_ms"] / peer["p50_ms"], 2),
        "rps_ratio_serving_vs_in_process": round(results["serving_process"]["rps"] / peer["rps"], 2),
        "rps_ratio_via_web_vs_in_process": round(results["via_web"]["rps"] / peer["rps"], 2),
        "promote_call_s": round(promoted_at - started, 3),
        "promote_to_first_completion_s": round(first_served - started, 3),
        "requests_until_new_version": requests_until,
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
