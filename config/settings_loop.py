"""Settings of the training loop: Celery broker and queues, run limits, retraining defaults.

Imported at the end of config/settings.py, so DATA_DIR and REDIS_URL are already defined there.
The defaults of the admin-editable TrainingPolicy row (N new votes, cool-down, training config,
gate margin) come from here when that row is first created; afterwards the admin's values win.

Broker choice (see config/celery.py for the whole story):
- CELERY_BROKER_URL set → used as is (production: always set it, so web and workers agree);
- else Redis at REDIS_URL answers → REDIS_URL;
- else kombu's filesystem transport under DATA_DIR/broker (a laptop without Redis).
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_int, env_str
from training.kto.defaults import PAPER_GRADIENT_ACCUMULATION_STEPS
from config.settings import DATA_DIR, REDIS_URL

# --- Run limits ------------------------------------------------------------------------------
# The longest a training run may take; the runner kills its process group after that.
PROSPECT_MAX_RUN_SECONDS = env_int("PROSPECT_MAX_RUN_SECONDS", 6 * 3600)
# How often the runner polls the subprocess, tails metrics/log into the run row and heartbeats.
PROSPECT_RUN_POLL_SECONDS = env_float("PROSPECT_RUN_POLL_SECONDS", 2.0)
# A running run whose heartbeat is older than this is declared dead by the reaper even when its
# worker lives on another host (where its pid cannot be checked).
PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS = env_int("PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS", 300)
# The evaluation gate's subprocesses (evaluate, judge) get this long each.
PROSPECT_EVAL_TIMEOUT_SECONDS = env_int("PROSPECT_EVAL_TIMEOUT_SECONDS", 3600)

# --- Launching the engine --------------------------------------------------------------------
# "accelerate": `accelerate launch [--config_file F] --num_processes N -m training.kto train ...`
# "python": `python -m training.kto train ...` (one process, no accelerate start-up cost).
PROSPECT_TRAIN_LAUNCHER = env_str("PROSPECT_TRAIN_LAUNCHER", "accelerate")
if PROSPECT_TRAIN_LAUNCHER not in ("accelerate", "python"):
    raise ImproperlyConfigured(f"PROSPECT_TRAIN_LAUNCHER={PROSPECT_TRAIN_LAUNCHER!r}: use 'accelerate' or 'python'")
# An accelerate config file per deployment (1 process, N GPUs, FSDP, DeepSpeed); empty = plain
# single process with accelerate's defaults.
PROSPECT_ACCELERATE_CONFIG = env_str("PROSPECT_ACCELERATE_CONFIG", "")
PROSPECT_NUM_PROCESSES = env_int("PROSPECT_NUM_PROCESSES", 1)

# --- Defaults of the TrainingPolicy row (admin-editable afterwards) ----------------------------
PROSPECT_BASE_MODEL = env_str("PROSPECT_BASE_MODEL", "")
PROSPECT_RETRAIN_ENABLED = env_bool("PROSPECT_RETRAIN_ENABLED", True)
PROSPECT_RETRAIN_MIN_NEW_VOTES = env_int("PROSPECT_RETRAIN_MIN_NEW_VOTES", 50)
PROSPECT_RETRAIN_COOLDOWN_SECONDS = env_int("PROSPECT_RETRAIN_COOLDOWN_SECONDS", 3600)
# How often beat asks "should we retrain?" (the periodic task's interval when first installed).
PROSPECT_RETRAIN_CHECK_SECONDS = env_int("PROSPECT_RETRAIN_CHECK_SECONDS", 60)
PROSPECT_TRAIN_LORA = env_bool("PROSPECT_TRAIN_LORA", False)
PROSPECT_TRAIN_BETA = env_float("PROSPECT_TRAIN_BETA", 0.1)
PROSPECT_TRAIN_LEARNING_RATE = env_float("PROSPECT_TRAIN_LEARNING_RATE", 5e-6)
PROSPECT_TRAIN_EPOCHS = env_float("PROSPECT_TRAIN_EPOCHS", 1.0)
PROSPECT_TRAIN_MAX_STEPS = env_int("PROSPECT_TRAIN_MAX_STEPS", 0)  # 0: no cap
PROSPECT_TRAIN_BATCH_SIZE = env_int("PROSPECT_TRAIN_BATCH_SIZE", 8)
# The paper's effective batch of 32 (8 per device × 4), passed explicitly to the engine.
PROSPECT_TRAIN_GRAD_ACCUM = env_int("PROSPECT_TRAIN_GRAD_ACCUM", PAPER_GRADIENT_ACCUMULATION_STEPS)
PROSPECT_TRAIN_MAX_LENGTH = env_int("PROSPECT_TRAIN_MAX_LENGTH", 512)
PROSPECT_TRAIN_LOSS = env_str("PROSPECT_TRAIN_LOSS", "kto")
PROSPECT_TRAIN_LAMBDA_MODE = env_str("PROSPECT_TRAIN_LAMBDA_MODE", "auto")
PROSPECT_TRAIN_HOLDOUT = env_float("PROSPECT_TRAIN_HOLDOUT", 0.1)
PROSPECT_TRAIN_SEED = env_int("PROSPECT_TRAIN_SEED", 0)
PROSPECT_PROMOTE_MARGIN = env_float("PROSPECT_PROMOTE_MARGIN", 0.01)
# "demo": judge generated outputs with the demo task's simulated annotator; "none": holdout only.
PROSPECT_GATE_JUDGE = env_str("PROSPECT_GATE_JUDGE", "demo")
PROSPECT_GATE_JUDGE_PROMPTS = env_int("PROSPECT_GATE_JUDGE_PROMPTS", 64)


# --- Celery ----------------------------------------------------------------------------------
def _redis_answers(url: str, timeout: float = 0.3) -> bool:
    """True when something accepts a TCP connection and answers PING at the Redis URL."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    # "-NOAUTH" still means a Redis is there (the URL's password is used by the real client).
    return reply.startswith((b"+PONG", b"-NOAUTH"))


if env_str("CELERY_BROKER_URL"):
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL")
    PROSPECT_BROKER_KIND = "configured"
elif _redis_answers(REDIS_URL):
    CELERY_BROKER_URL = REDIS_URL
    PROSPECT_BROKER_KIND = "redis"
else:
    CELERY_BROKER_URL = "filesystem://"
    PROSPECT_BROKER_KIND = "filesystem"

PROSPECT_BROKER_DIR = DATA_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # Producers and consumers on this machine share one folder: messages are files in it.
    for _sub in ("queue", "processed", "control"):
        os.makedirs(PROSPECT_BROKER_DIR / _sub, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(PROSPECT_BROKER_DIR / "queue"),
        "data_folder_out": str(PROSPECT_BROKER_DIR / "queue"),
        "processed_folder": str(PROSPECT_BROKER_DIR / "processed"),
        "control_folder": str(PROSPECT_BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # An unacknowledged message (late ack: a GPU task acks when it ends) goes back to the queue
        # after this long. It must exceed the longest run, or a second worker would start the same
        # run while the first still trains it (the status guard would refuse it anyway).
        "visibility_timeout": PROSPECT_MAX_RUN_SECONDS + 3600,
        "socket_connect_timeout": 5,
    }

CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 5
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "training.tasks.run_training": {"queue": "gpu"},
    "training.tasks.evaluate_candidate": {"queue": "gpu"},
    "training.fill_queue": {"queue": "gpu"},
}
# Late ack + reject on worker loss: a message is only removed once its task returned, so a worker
# that dies mid-task loses nothing; the database status guard makes the redelivery harmless.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Results live in the database rows (runs, versions); Celery result storage is not used.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
