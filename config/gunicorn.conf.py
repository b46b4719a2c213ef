"""gunicorn settings of the web process (`gunicorn -c config/gunicorn.conf.py config.wsgi`).

With several workers each one counts its own requests; PROMETHEUS_MULTIPROC_DIR (an empty folder
of the web container) makes /metrics add them all up, whichever worker answers the scrape.
"""

import os
import shutil


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
