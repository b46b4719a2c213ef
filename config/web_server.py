"""The web process as deployed: granian serving config.wsgi.

    python -m config.web_server [--host 0.0.0.0] [--port 8000] [--workers N] [--threads T]

Why granian rather than gunicorn: the vote endpoint is the busiest one and its cost is mostly
the server around Django, not Django. Measured with bench/web_load.py on 2 cores (README),
against gunicorn gthread 2 x 8 in alternating runs: the no-op view 2.5x the rate, votes 1.4x at
30 % less CPU per vote, and a vote p99/p50 ratio near 1.6 instead of 3. Parsing, keep-alive and
the hand-off to a Python thread happen outside the GIL, so the Python threads only run Django.
Request bodies are streamed to the app (uploads of a GiB do not sit in memory) and streamed
responses (/v1/ completions with `stream: true`) go out chunk by chunk.

Defaults come from the environment so the container and a laptop need no flags:
WEB_CONCURRENCY worker processes (one per core), WEB_THREADS Python threads each (2: one
can run Django while the other waits for its commit; more threads only queue on the GIL).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return _at_least_one(raw)
    except (ValueError, argparse.ArgumentTypeError):
        raise SystemExit(f"{name}={raw!r} must be a whole number of at least 1") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("WEB_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=_at_least_one, default=_positive_int("PORT", 8000))
    parser.add_argument("--workers", type=_at_least_one, default=_positive_int("WEB_CONCURRENCY", os.cpu_count() or 1))
    parser.add_argument("--threads", type=_at_least_one, default=_positive_int("WEB_THREADS", 2))
    return parser.parse_args(argv)


def command(port: int, workers: int, threads: int | None = None, host: str = "127.0.0.1") -> list[str]:
    """The command line that starts this web process (for the tests and bench/web_load.py, which
    must run the server as shipped); threads None: WEB_THREADS or its default."""
    line = [sys.executable, "-m", "config.web_server", "--host", host, "--port", str(port), "--workers", str(workers)]
    return line + (["--threads", str(threads)] if threads is not None else [])


def reset_metrics_folder() -> None:
    # With several workers each one counts its own requests; PROMETHEUS_MULTIPROC_DIR (an empty
    # folder) makes /metrics add them all up, whichever worker answers the scrape. Counts left by
    # a previous start would be added to this one's.
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    reset_metrics_folder()
    Server(
        "config.wsgi:application",
        address=args.host,
        port=args.port,
        interface=Interfaces.WSGI,
        http=HTTPModes.http1,
        websockets=False,
        workers=args.workers,
        blocking_threads=args.threads,
        # Product apps keep their connection open between clicks; a burst of them queues, not fails.
        backlog=2048,
        # A client that never finishes its headers is dropped after 10 s (slowloris).
        http1_settings=HTTP1Settings(header_read_timeout=10_000, keep_alive=True),
        # A worker that dies (out of memory, a crash in a C extension) is replaced, not lost.
        respawn_failed_workers=True,
        log_level=LogLevels(os.environ.get("WEB_LOG_LEVEL", "warning").lower()),
        log_access=False,
    ).serve()


if __name__ == "__main__":
    main()
