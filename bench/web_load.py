"""Web benchmark: the vote endpoint under load, against a no-op view on the same server, and
exporting a million votes.

What it does (bounded in count and time; nothing here is a test):
1. Creates a fresh Postgres database (`prospect_bench` unless BENCH_DATABASE_URL says otherwise),
   migrates it, and seeds a project API key (scope votes:write) and some generations.
2. Starts the app as shipped (`python -m config.web_server`: granian, one worker per core,
   WEB_THREADS threads each) on loopback; both endpoints are measured against this one server.
3. Drives `GET /healthz` (a view that does nothing: the ceiling) and `POST /api/v1/votes/`
   in alternating slices (--rounds), with C concurrent keep-alive clients (asyncio, raw HTTP/1.1)
   for a fixed total time each, recording
   every latency. Each vote carries a unique end-user id, so after the run
   "sent and acknowledged (201)" can be compared with the rows in the database: lost votes.
4. Grows the database to 1M votes with SQL, runs `snapshot_dataset` and `export_kto` as child
   processes, and reports rows/s and each child's peak RSS (also for a 1k-vote export, to show
   that the export's memory does not grow with the data).
Ends with one JSON line of headline figures (SPEC §3 "Benchmarks").

    .venv/bin/python bench/web_load.py [--clients 64] [--seconds 10] [--rounds 5] [--export-votes 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from config import web_server  # noqa: E402  (after the repository is importable)
from tests.helpers import free_port  # noqa: E402

PYTHON = sys.executable
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/prospect_bench"
SEED_GENERATIONS = 2000


def log(message: str) -> None:
    print(f"[web_load] {message}", file=sys.stderr, flush=True)


# --- Database set-up ------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """The URL without its query: Django options such as server_side_binding are not libpq's."""
    return urlparse(url)._replace(query="").geturl()


def recreate_database(url: str) -> None:
    parsed = urlparse(libpq_url(url))
    name = parsed.path.lstrip("/")
    admin_url = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def manage(env: dict, *args: str) -> str:
    result = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


SEED_SCRIPT = """
from feedback.models import Generation, Prompt
from feedback.content import prompt_sha256, sha256_text
from projects.selectors import default_project
from projects.services import create_api_key
project = default_project()
_, key = create_api_key(project, scopes="votes:write", name="bench product app")
prompts = Prompt.objects.bulk_create([Prompt(project=project, content=f"bench prompt {i}", content_sha256=prompt_sha256(f"bench prompt {i}")) for i in range({n})])
Generation.objects.bulk_create([Generation(project=project, prompt=p, completion="answer", completion_sha256=sha256_text("answer"), source="bench") for p in prompts])
print(key, min(Generation.objects.values_list("id", flat=True)), max(Generation.objects.values_list("id", flat=True)))
"""


# --- The server -----------------------------------------------------------------------------


def start_web_server(env: dict, port: int, workers: int, threads: int) -> subprocess.Popen:
    # The shipped web process (config/web_server.py: granian, keep-alive, backlog), with the
    # process and thread counts of this run.
    command = web_server.command(port, workers, threads)
    server = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    stop(server)
    raise SystemExit("the web server did not answer /healthz within 60 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- The load client ------------------------------------------------------------------------


class LoadResult:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.sent = 0
        self.elapsed = 0.0
        self.errors = 0

    def add(self, other: LoadResult) -> None:
        self.latencies += other.latencies
        for code, n in other.statuses.items():
            self.statuses[code] = self.statuses.get(code, 0) + n
        self.sent += other.sent
        self.elapsed += other.elapsed
        self.errors += other.errors

    def summary(self, ok_status: int) -> dict:
        ordered = sorted(self.latencies)
        ok = self.statuses.get(ok_status, 0)

        def percentile(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

        return {
            "requests": len(ordered),
            "ok": ok,
            "per_s": ok / self.elapsed if self.elapsed else 0.0,
            "p50_ms": percentile(0.50),
            "p99_ms": percentile(0.99),
            "mean_ms": statistics.fmean(ordered) * 1000 if ordered else float("nan"),
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "connection_errors": self.errors,
        }


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers.get("connection", "").lower() == "close"


async def client(port: int, requests, deadline: float, result: LoadResult) -> None:
    reader = writer = None
    for request in requests:
        if time.perf_counter() >= deadline:
            break
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.perf_counter()
            writer.write(request)
            result.sent += 1
            status, closing = await read_response(reader)
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if closing:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError):
            result.errors += 1
            writer = None
    if writer is not None:
        writer.close()


async def drive(port: int, make_requests, clients: int, seconds: float) -> LoadResult:
    result = LoadResult()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(client(port, make_requests(index), deadline, result) for index in range(clients)))
    result.elapsed = time.perf_counter() - started
    return result


def noop_requests(_client_index: int):
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    while True:
        yield request


def vote_requests_factory(token: str, first_id: int, last_id: int, run_tag: str, max_per_client: int):
    # The load generator shares the 2 cores with the server, so each request is built by filling a
    # template rather than json.dumps (same bytes, a third of the client's CPU per vote).
    head = b"POST /api/v1/votes/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + (
        f"Authorization: Api-Key {token}\r\nContent-Length: ".encode()
    )

    def make(client_index: int):
        span = last_id - first_id + 1
        for sequence in range(max_per_client):
            body = (
                f'{{"generation_id": {first_id + (client_index * 7919 + sequence) % span}, '
                f'"desirable": {"true" if sequence % 3 != 0 else "false"}, '
                f'"external_user_id": "{run_tag}-{client_index}-{sequence}"}}'
            ).encode()
            yield head + str(len(body)).encode() + b"\r\n\r\n" + body

    return make


class CpuMeter:
    """CPU seconds spent by the web server, its database backends and this client.

    Throughput on a shared 2-core machine moves with whatever else runs there; CPU time per
    request does not, so the per-request cost of each side is reported next to the rates.
    """

    def __init__(self, server: subprocess.Popen, database_url: str):
        self.server = psutil.Process(server.pid)
        self.database = urlparse(database_url).path.lstrip("/")
        self.database_url = libpq_url(database_url)

    def _backend_pids(self) -> list[int]:
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            return [
                row[0]
                for row in connection.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (self.database,)
                )
            ]

    @staticmethod
    def _cpu(processes) -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def read(self) -> dict[str, float]:
        return {
            "server": self._cpu([self.server, *self.server.children(recursive=True)]),
            "database": self._cpu([psutil.Process(pid) for pid in self._backend_pids() if psutil.pid_exists(pid)]),
            "client": time.process_time(),
        }


def measured(meter: CpuMeter, run) -> tuple[LoadResult, dict[str, float]]:
    """Run RUN; return its LoadResult and the CPU seconds each side spent meanwhile."""
    before = meter.read()
    result = run()
    after = meter.read()
    return result, {side: after[side] - before[side] for side in before}


def _add_cpu(total: dict[str, float], cpu: dict[str, float], _result: LoadResult) -> None:
    for side, seconds in cpu.items():
        total[side] = total.get(side, 0.0) + seconds


def _per_request(cpu: dict[str, float], result: LoadResult) -> dict[str, float]:
    requests = max(1, len(result.latencies))
    return {f"{side}_cpu_ms_per_request": round(seconds / requests * 1000, 3) for side, seconds in cpu.items()}


# --- Export of a million votes --------------------------------------------------------------

GROW_SQL = """
INSERT INTO feedback_prompt (project_id, content, content_sha256, created_at)
SELECT (SELECT min(id) FROM projects_project), to_jsonb('export prompt ' || i), md5('export prompt ' || i) || md5('p' || i), now()
FROM generate_series(%(first)s, %(last)s) AS i;
INSERT INTO feedback_generation (project_id, prompt_id, completion, completion_sha256, source, created_at)
SELECT p.project_id, p.id, 'completion ' || j || ' for ' || p.id, md5(j || '-' || p.id) || md5('c' || j), 'bench', now()
FROM feedback_prompt p CROSS JOIN generate_series(1, %(per_prompt)s) AS j
WHERE p.content_sha256 IN (SELECT md5('export prompt ' || i) || md5('p' || i) FROM generate_series(%(first)s, %(last)s) AS i);
INSERT INTO feedback_vote (generation_id, external_user_id, desirable, weight, comment, source, created_at)
SELECT g.id, 'export-rater', (g.id %% 4) <> 0, 1.0, '', 'bench', now()
FROM feedback_generation g WHERE g.source = 'bench' AND g.completion LIKE 'completion %%'
  AND NOT EXISTS (SELECT 1 FROM feedback_vote v WHERE v.generation_id = g.id);
"""


def grow_votes(database_url: str, first_prompt: int, n_prompts: int, per_prompt: int) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        connection.execute(
            GROW_SQL.replace("%(first)s", str(first_prompt))
            .replace("%(last)s", str(first_prompt + n_prompts - 1))
            .replace("%(per_prompt)s", str(per_prompt))
            .replace("%%", "%")
        )
        connection.execute("ANALYZE")


def timed_child(env: dict, *args: str) -> tuple[str, float, float]:
    """Run manage.py ARGS; return (stdout, seconds, peak RSS in MiB of that child alone)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([PYTHON, "manage.py", *args], cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"manage.py {' '.join(args)} failed:\n{err.read().decode()}")
        return out.read().decode(), seconds, usage.ru_maxrss / 1024


def bench_export(env: dict, database_url: str, data_dir: Path, total_votes: int) -> dict:
    figures = {}
    existing = 0
    for label, target in (("small", 1000), ("large", total_votes)):
        per_prompt = 10
        n_prompts = (target - existing) // per_prompt
        log(f"growing the database to about {target:,} exported votes")
        grow_votes(database_url, existing // per_prompt, n_prompts, per_prompt)
        existing = target
        snapshot_out, snapshot_s, snapshot_rss = timed_child(env, "snapshot_dataset", "--holdout", "0")
        snapshot = json.loads(snapshot_out)
        export_path = data_dir / f"export-{label}.jsonl"
        export_out, export_s, export_rss = timed_child(
            env, "export_kto", str(snapshot["id"]), "--out", str(export_path), "--split", "all"
        )
        rows = json.loads(export_out)["rows"]
        figures[label] = {
            "votes": snapshot["n_votes"],
            "rows": rows,
            "snapshot_s": round(snapshot_s, 2),
            "snapshot_rows_per_s": round(snapshot["n_train"] / snapshot_s),
            "snapshot_peak_rss_mb": round(snapshot_rss, 1),
            "export_s": round(export_s, 2),
            "export_rows_per_s": round(rows / export_s),
            "export_peak_rss_mb": round(export_rss, 1),
        }
        log(f"{label}: {json.dumps(figures[label])}")
        export_path.unlink()
    return figures


# --- Main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0, help="load time per endpoint, over all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="alternating no-op/vote slices per endpoint")
    # Defaults: those of config/web_server.py (the measurements behind them are noted there).
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1)))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("WEB_THREADS", "2")))
    parser.add_argument("--max-votes-per-client", type=int, default=20_000)
    parser.add_argument("--export-votes", type=int, default=1_000_000, help="0 skips the export part")
    args = parser.parse_args()

    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    data_dir = Path(tempfile.mkdtemp(prefix="prospect-bench-"))
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DEBUG": "0",
        "SECRET_KEY": "bench-only-secret-key-not-for-production",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Persistent connections, as any production deployment runs: no connect per request.
        "DB_CONN_MAX_AGE": "600",
        "LOG_LEVEL": "WARNING",
        "PROSPECT_DATA_DIR": str(data_dir),
    }
    try:
        log(f"fresh database {database_url}")
        recreate_database(database_url)
        manage(env, "migrate", "--no-input")
        seeded = manage(env, "shell", "--no-imports", "-c", SEED_SCRIPT.replace("{n}", str(SEED_GENERATIONS)))
        token, first_id, last_id = seeded.strip().splitlines()[-1].split()
        first_id, last_id = int(first_id), int(last_id)

        port = free_port()
        log(f"granian, {args.workers} workers x {args.threads} threads on 127.0.0.1:{port}")
        server = start_web_server(env, port, args.workers, args.threads)
        try:
            # A short warm-up so that every worker has imported everything and opened its DB connection.
            asyncio.run(drive(port, noop_requests, args.clients, 1.0))
            run_tag = f"bench-{int(time.time())}"
            asyncio.run(
                drive(port, vote_requests_factory(token, first_id, last_id, "warmup-" + run_tag, 50), args.clients, 1.0)
            )
            # The two endpoints take turns (no-op, votes, no-op, votes, ...) in short slices, so a
            # job that starts or stops elsewhere on this shared machine weighs on both alike and
            # the ratio stays comparable between runs.
            meter = CpuMeter(server, database_url)
            slice_s = args.seconds / args.rounds
            noop_result, vote_result = LoadResult(), LoadResult()
            noop_cpu, vote_cpu = {}, {}
            for round_index in range(args.rounds):
                log(
                    f"round {round_index + 1}/{args.rounds}: no-op view then votes, {args.clients} clients, {slice_s:.1f} s each"
                )
                part, cpu = measured(meter, lambda: asyncio.run(drive(port, noop_requests, args.clients, slice_s)))
                noop_result.add(part), _add_cpu(noop_cpu, cpu, part)
                part, cpu = measured(
                    meter,
                    lambda round_index=round_index: asyncio.run(
                        drive(
                            port,
                            vote_requests_factory(
                                token, first_id, last_id, f"{run_tag}-r{round_index}", args.max_votes_per_client
                            ),
                            args.clients,
                            slice_s,
                        )
                    ),
                )
                vote_result.add(part), _add_cpu(vote_cpu, cpu, part)
            noop_cpu = _per_request(noop_cpu, noop_result)
            vote_cpu = _per_request(vote_cpu, vote_result)
            noop = noop_result.summary(200)
            votes = vote_result.summary(201)
        finally:
            stop(server)

        with psycopg.connect(libpq_url(database_url)) as connection:
            rows_saved = connection.execute(
                "SELECT count(*) FROM feedback_vote WHERE external_user_id LIKE %s", (f"{run_tag}-%",)
            ).fetchone()[0]
            # Also the other way round: a vote acknowledged twice or a duplicate would show here.
            duplicates = connection.execute(
                "SELECT count(*) FROM (SELECT external_user_id FROM feedback_vote WHERE external_user_id LIKE %s "
                "GROUP BY generation_id, external_user_id HAVING count(*) > 1) AS d",
                (f"{run_tag}-%",),
            ).fetchone()[0]
        acknowledged = votes["ok"]
        lost = max(0, acknowledged - rows_saved)
        log(f"no-op : {json.dumps(noop)} {json.dumps(noop_cpu)}")
        log(f"votes : {json.dumps(votes)} {json.dumps(vote_cpu)}")
        noop_cost, vote_cost = sum(noop_cpu.values()), sum(vote_cpu.values())
        log(
            f"votes sent {vote_result.sent}, acknowledged {acknowledged}, rows in the database {rows_saved}, lost {lost}"
        )

        export = bench_export(env, database_url, data_dir, args.export_votes) if args.export_votes else {}
        headline = {
            "bench": "web_load",
            "clients": args.clients,
            "rounds": args.rounds,
            "server": f"granian {args.workers}x{args.threads}",
            "cpus": os.cpu_count(),
            "votes_per_s": round(votes["per_s"], 1),
            "vote_p50_ms": round(votes["p50_ms"], 2),
            "vote_p99_ms": round(votes["p99_ms"], 2),
            "noop_per_s": round(noop["per_s"], 1),
            "noop_p50_ms": round(noop["p50_ms"], 2),
            "noop_p99_ms": round(noop["p99_ms"], 2),
            "throughput_ratio_vs_noop": round(votes["per_s"] / noop["per_s"], 3) if noop["per_s"] else None,
            # CPU per request of server + database + client: what the throughput ratio would be on
            # a machine doing nothing else (throughput = cores / CPU per request).
            "vote_cpu_ms_per_request": round(vote_cost, 3),
            "noop_cpu_ms_per_request": round(noop_cost, 3),
            "cpu_cost_ratio_noop_vs_vote": round(noop_cost / vote_cost, 3) if vote_cost else None,
            "vote_server_cpu_ms": vote_cpu["server_cpu_ms_per_request"],
            "vote_database_cpu_ms": vote_cpu["database_cpu_ms_per_request"],
            "votes_sent": vote_result.sent,
            "votes_acknowledged": acknowledged,
            "votes_in_database": rows_saved,
            "votes_lost": lost,
            "duplicate_votes": duplicates,
            "vote_errors": {k: v for k, v in votes["statuses"].items() if k != "201"},
        }
        if export:
            large, small = export["large"], export["small"]
            headline.update(
                {
                    "export_votes": large["votes"],
                    "export_rows_per_s": large["export_rows_per_s"],
                    "export_peak_rss_mb": large["export_peak_rss_mb"],
                    # The same export on a small snapshot: equal peaks mean memory does not grow with the data.
                    "export_small_votes": small["votes"],
                    "export_small_peak_rss_mb": small["export_peak_rss_mb"],
                    "snapshot_rows_per_s": large["snapshot_rows_per_s"],
                    "snapshot_peak_rss_mb": large["snapshot_peak_rss_mb"],
                }
            )
        print(json.dumps(headline), flush=True)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
