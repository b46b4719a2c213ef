"""gunicorn settings of the web process (`gunicorn -c config/gunicorn.conf.py config.wsgi`).

With several workers each one counts its own requests; PROMETHEUS_MULTIPROC_DIR (an empty folder
of the web container) makes /metrics add them all up, whichever worker answers the scrape.
"""

import os
import shutil

# Threads, because a request spends most of its time waiting for the database (a vote waits for its
# commit to reach the disk) and a waiting thread leaves the GIL to the others. One worker process per
# core (WEB_CONCURRENCY, gunicorn's own variable, or --workers), GUNICORN_THREADS threads each.
# Measured with bench/web_load.py on 2 cores (README): 2 workers x 8 threads beat 2 x 4 and 4 x 4 in
# votes per CPU second and in the vote/no-op throughput ratio; 2 x 16 was no better than 2 x 8.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Product apps keep their connection open between clicks; a burst of them queues, not fails.
keepalive = 30
backlog = 2048


def on_starting(server):
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        # Counts of a previous start would be added to this one's.
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
