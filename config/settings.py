"""Prospect settings: the one settings module. Everything comes from the environment.

Each variable is read once, here, with its default named once: the training numbers come from
training/kto/defaults.py (the paper's recommendations), the rest are written below. The README's
configuration table is generated from these reads (scripts/config_table.py) and checked by a test.
Importing this module has no side effects: no directory is created and nothing is connected to
(the Celery broker is chosen when the Celery app is first configured, see config/celery.py).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_int, env_list, env_str
from training.kto import defaults

BASE_DIR = Path(__file__).resolve().parent.parent

# Off unless asked for: `make demo` (manage.py demo) and the test suite ask for it explicitly.
DEBUG = env_bool("DEBUG", False, "Django's debug mode (`make demo` and the tests turn it on); never in production")
SECRET_KEY = env_str("SECRET_KEY", "", "required when `DEBUG` is off", shown="a dev key while `DEBUG` is on")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off: export SECRET_KEY=$(python -c "
            "'import secrets; print(secrets.token_urlsafe(50))') (or DEBUG=1 on a laptop)"
        )
    # Only for a laptop run with DEBUG on; production refuses to start without a real key.
    SECRET_KEY = "insecure-dev-key-prospect-do-not-use-in-production"

ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS",
    ["localhost", "127.0.0.1", "[::1]", "testserver"],
    "comma-separated host names the web app answers to",
)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [], "comma-separated origins trusted for CSRF (behind a proxy)")

# Production sits behind a proxy that ends TLS and says so in X-Forwarded-Proto. Only then may
# cookies be marked secure and HSTS be sent; a plain-HTTP laptop run would otherwise lose its session.
BEHIND_TLS_PROXY = env_bool(
    "PROSPECT_BEHIND_TLS_PROXY",
    False,
    "served over HTTPS by a proxy that sets X-Forwarded-Proto: secure cookies, HSTS, HTTP redirected to HTTPS",
)
HSTS_SECONDS = env_int("PROSPECT_HSTS_SECONDS", 365 * 24 * 3600, "HSTS max-age sent behind a TLS proxy (seconds)")
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Probes and the metrics scraper talk plain HTTP to the container, past the proxy.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = HSTS_SECONDS
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# Where snapshots, run artifacts and the embedded broker live. Artifacts are never overwritten.
DATA_DIR = Path(
    env_str(
        "PROSPECT_DATA_DIR",
        str(BASE_DIR / "var"),
        "snapshots, run artifacts, SQLite database, embedded broker",
        shown="`var/` in the repository",
    )
).resolve()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    # Swagger UI / Redoc assets served from the installation (no CDN): /api/docs/.
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "projects",
    "feedback",
    "training",
]

MIDDLEWARE = [
    "config.middleware.RequestMetricsMiddleware",
    # Outermost after the metrics: every error under /api/ becomes JSON, whatever raised it.
    "config.middleware.ApiJsonErrorMiddleware",
    "config.middleware.ServiceUnavailableMiddleware",
    # Before anything reads the body: an API body over its limit is a JSON 413.
    "config.middleware.ApiBodyLimitMiddleware",
    "config.middleware.NulInUrlMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files from the web process itself (no separate server), DEBUG or not.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "config.middleware.StaffOnlyAdminMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: it answers a locked-out login itself.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "projects.context_processors.project_header",
            ],
        },
    },
]

# SQLite on a laptop; Postgres (or anything dj-database-url reads) when DATABASE_URL is set.
DATABASES = {
    "default": dj_database_url.parse(
        env_str(
            "DATABASE_URL",
            f"sqlite:///{DATA_DIR / 'db.sqlite3'}",
            "any dj-database-url URL; Postgres in production",
            shown="SQLite in `PROSPECT_DATA_DIR`",
        ),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0, "seconds a database connection is kept (0: per request)"),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one SQLite file in the demo: wait for the lock instead of failing;
    # let pages read while a worker's import or snapshot holds the write lock (write-ahead log); and
    # take the write lock when a transaction begins, so that one which read first never finds
    # another's write in its way later (SQLite would fail it at once instead of waiting).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=30, init_command="PRAGMA journal_mode=WAL", transaction_mode="IMMEDIATE"
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Brute force: django-axes locks a (username, address) pair out after repeated failures.
AUTHENTICATION_BACKENDS = [
    "config.auth.LockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("PROSPECT_LOGIN_FAILURE_LIMIT", 5, "failed logins in a row before a lockout")
AXES_COOLOFF_TIME = env_float("PROSPECT_LOGIN_COOLOFF_HOURS", 0.25, "how long a lockout lasts, in hours") or None
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_HTTP_RESPONSE_CODE = 429
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
# The login page shows the lockout (templates/registration/lockout.html) instead of a bare 403.
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC", "time zone of the pages")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(
    env_str(
        "PROSPECT_STATIC_ROOT",
        str(DATA_DIR / "staticfiles"),
        "where `collectstatic` puts the static files (the Docker image does it at build)",
        shown="`staticfiles/` in `PROSPECT_DATA_DIR`",
    )
)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the apps' and static/ folders when collectstatic was not run (a laptop);
# a missing STATIC_ROOT is then expected, not worth WhiteNoise's warning at every start.
WHITENOISE_USE_FINDERS = True
warnings.filterwarnings("ignore", message="No directory at: ")

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "projects.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["projects.permissions.ApiClientRateThrottle"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # JSON refusing NUL, lone surrogates, NaN and deep nesting (config/edge.py); anything else 415.
    "DEFAULT_PARSER_CLASSES": [
        "config.edge.SafeJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "config.edge.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Prospect API",
    "DESCRIPTION": "Send generations and thumbs up/down; call the deployed model.",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.edge.add_error_responses",
    ],
}

# --- Feedback ------------------------------------------------------------------------------
VOTES_PER_ITEM = env_int("PROSPECT_VOTES_PER_ITEM", 1, "votes an item needs before it leaves the annotation queue")
IMPORT_MAX_LINE_BYTES = env_int(
    "PROSPECT_IMPORT_MAX_LINE_BYTES", 1_000_000, "largest accepted line of an imported JSONL file, in bytes"
)
# Bodies of API requests: a JSON document (a batch of generations) up to this; an import's file up
# to the next one, streamed to disk (never held in memory). Larger: 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int(
    "PROSPECT_API_MAX_BODY_BYTES", 10 * 1024 * 1024, "largest JSON or form body of an API request, in bytes"
)
PROSPECT_IMPORT_MAX_UPLOAD_BYTES = env_int(
    "PROSPECT_IMPORT_MAX_UPLOAD_BYTES", 1024 * 1024 * 1024, "largest feedback file an upload may send, in bytes"
)
QUEUE_CLAIM_SECONDS = env_int(
    "PROSPECT_QUEUE_CLAIM_SECONDS", 300, "how long an annotator holds an item before another may be served it"
)
# --- Projects and API keys ----------------------------------------------------------------
PROSPECT_DEFAULT_PROJECT = env_str(
    "PROSPECT_DEFAULT_PROJECT", "demo", "the project a fresh installation gets, and that commands use without --project"
)
PROSPECT_API_KEY_CACHE_SECONDS = env_float(
    "PROSPECT_API_KEY_CACHE_SECONDS",
    2.0,
    "how long a web process reuses a verified API key without asking the database (0: never); a key "
    "revoked or changed in another process is refused there within this time, in its own process at once",
)
PROSPECT_API_DEFAULT_RATE = env_str(
    "PROSPECT_API_DEFAULT_RATE",
    "",
    "requests per key, e.g. 100/s or 6000/min, for keys without their own rate (empty: unlimited)",
)

# --- Snapshots: the dataset and its class weights λ_D / λ_U ----------------------------------
KTO_TARGET_RATIO = env_float(
    "PROSPECT_KTO_TARGET_RATIO",
    defaults.TARGET_RATIO,
    "λ_D·n_D/(λ_U·n_U) aimed at when the data is outside [1, 3/2] (paper Eq. 7)",
)
SNAPSHOT_HOLDOUT = env_float(
    "PROSPECT_SNAPSHOT_HOLDOUT",
    defaults.SNAPSHOT_HOLDOUT,
    "share of prompts held out of training for the gate (split by prompt)",
)

# --- Defaults of the admin-editable TrainingPolicy row (the admin's values win afterwards) ----
PROSPECT_BASE_MODEL = env_str(
    "PROSPECT_BASE_MODEL",
    "",
    "local save_pretrained directory of the first active version (`make demo` uses the offline demo model)",
)
PROSPECT_RETRAIN_ENABLED = env_bool(
    "PROSPECT_RETRAIN_ENABLED", True, "retrain automatically when enough new votes arrived"
)
PROSPECT_RETRAIN_MIN_NEW_VOTES = env_int(
    "PROSPECT_RETRAIN_MIN_NEW_VOTES", 50, "new votes since the last snapshot that start a run"
)
PROSPECT_RETRAIN_COOLDOWN_SECONDS = env_int(
    "PROSPECT_RETRAIN_COOLDOWN_SECONDS", 3600, "least time between the starts of two automatic runs"
)
PROSPECT_RETRAIN_CHECK_SECONDS = env_int(
    "PROSPECT_RETRAIN_CHECK_SECONDS", 60, "how often beat asks whether to retrain (when first installed)"
)
PROSPECT_TRAIN_LORA = env_bool("PROSPECT_TRAIN_LORA", False, "train a LoRA adapter instead of full weights")
PROSPECT_TRAIN_LOSS = env_str("PROSPECT_TRAIN_LOSS", "kto", "the loss: KTO, an ablation or a baseline")
PROSPECT_TRAIN_BETA = env_float("PROSPECT_TRAIN_BETA", defaults.PAPER_BETA, "β")
PROSPECT_TRAIN_LEARNING_RATE = env_float("PROSPECT_TRAIN_LEARNING_RATE", defaults.PAPER_LEARNING_RATE, "learning rate")
PROSPECT_TRAIN_EPOCHS = env_float("PROSPECT_TRAIN_EPOCHS", 1.0, "epochs over the snapshot's training split")
PROSPECT_TRAIN_MAX_STEPS = env_int("PROSPECT_TRAIN_MAX_STEPS", 0, "cap on optimizer steps (0: no cap)")
PROSPECT_TRAIN_BATCH_SIZE = env_int(
    "PROSPECT_TRAIN_BATCH_SIZE", defaults.PAPER_MICROBATCH, "microbatch per process (KTO's z0 needs at least 2)"
)
PROSPECT_TRAIN_GRAD_ACCUM = env_int(
    "PROSPECT_TRAIN_GRAD_ACCUM",
    defaults.PAPER_EFFECTIVE_BATCH // defaults.PAPER_MICROBATCH,
    "microbatches per optimizer step (the paper's effective batch of 32)",
)
PROSPECT_TRAIN_MAX_LENGTH = env_int(
    "PROSPECT_TRAIN_MAX_LENGTH", defaults.TRL_MAX_LENGTH, "longest prompt + completion in tokens"
)
PROSPECT_TRAIN_LAMBDA_MODE = env_str(
    "PROSPECT_TRAIN_LAMBDA_MODE", "auto", "how a snapshot's λ_D / λ_U are chosen: auto, downside_first or manual"
)
PROSPECT_TRAIN_SEED = env_int(
    "PROSPECT_TRAIN_SEED", 0, "seed of the data order, the holdout split and the judge's prompts"
)
PROSPECT_PROMOTE_MARGIN = env_float(
    "PROSPECT_PROMOTE_MARGIN", 0.01, "how much better a candidate must be to be auto-promoted"
)
PROSPECT_GATE_JUDGES = env_str(
    "PROSPECT_GATE_JUDGES",
    "demo",
    "the gate's judges, comma-separated, all must agree: demo, heldout, pairwise, canary, llm",
)
PROSPECT_GATE_JUDGE_PROMPTS = env_int(
    "PROSPECT_GATE_JUDGE_PROMPTS", 64, "held-out prompts the demo and LLM judges score"
)
PROSPECT_GATE_CONFIDENCE = env_float(
    "PROSPECT_GATE_CONFIDENCE", 0.95, "confidence at which a judge must find the candidate better"
)
PROSPECT_GATE_MIN_HOLDOUT_EXAMPLES = env_int(
    "PROSPECT_GATE_MIN_HOLDOUT_EXAMPLES", 30, "the heldout judge refuses to decide on fewer held-out examples"
)
PROSPECT_GATE_CANARY_SHARE = env_float(
    "PROSPECT_GATE_CANARY_SHARE", 0.1, "share of product traffic a candidate answers during its canary"
)
PROSPECT_GATE_CANARY_MIN_VOTES = env_int(
    "PROSPECT_GATE_CANARY_MIN_VOTES", 50, "end-user votes each side of a canary needs before it decides"
)
PROSPECT_GATE_CANARY_MAX_VOTES = env_int(
    "PROSPECT_GATE_CANARY_MAX_VOTES", 1000, "votes per side after which a canary with no clear difference stops"
)
PROSPECT_GATE_CHECK_SECONDS = env_int(
    "PROSPECT_GATE_CHECK_SECONDS", 60, "how often beat asks the judges still collecting evidence again"
)

# --- Runs ------------------------------------------------------------------------------------
PROSPECT_MAX_RUN_SECONDS = env_int(
    "PROSPECT_MAX_RUN_SECONDS", 6 * 3600, "a run is killed (whole process group) after this"
)
PROSPECT_RUN_POLL_SECONDS = env_float(
    "PROSPECT_RUN_POLL_SECONDS", 2.0, "how often the runner mirrors a run's progress and heartbeats"
)
PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS = env_int(
    "PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS", 300, "a running run silent this long is declared dead by the reaper"
)
PROSPECT_EVAL_TIMEOUT_SECONDS = env_int(
    "PROSPECT_EVAL_TIMEOUT_SECONDS", 3600, "time limit of each gate measurement and adapter merge"
)
PROSPECT_TRAIN_LAUNCHER = env_str(
    "PROSPECT_TRAIN_LAUNCHER", "accelerate", "accelerate: `accelerate launch`; python: one plain process"
)
if PROSPECT_TRAIN_LAUNCHER not in ("accelerate", "python"):
    raise ImproperlyConfigured(f"PROSPECT_TRAIN_LAUNCHER={PROSPECT_TRAIN_LAUNCHER!r}: use 'accelerate' or 'python'")
PROSPECT_ACCELERATE_CONFIG = env_str(
    "PROSPECT_ACCELERATE_CONFIG",
    "",
    "an accelerate config file: one of training/kto/accelerate/ (DDP, FSDP; DeepSpeed is refused)",
)
PROSPECT_NUM_PROCESSES = env_int("PROSPECT_NUM_PROCESSES", 1, "training processes per run")
PROSPECT_TRAIN_CHECKPOINTING = env_str(
    "PROSPECT_TRAIN_CHECKPOINTING",
    defaults.LOOP_CHECKPOINTING,
    "activation checkpointing of runs, for the worker's GPU memory: auto (measured at each run's start: the least "
    "recompute whose peak fits the free memory); off; elementwise (about half the activations, no matmul "
    "recomputed); layer (the least memory, one more forward)",
)
if PROSPECT_TRAIN_CHECKPOINTING not in ("auto", "off", *defaults.CHECKPOINT_POLICIES):
    raise ImproperlyConfigured(
        f"PROSPECT_TRAIN_CHECKPOINTING={PROSPECT_TRAIN_CHECKPOINTING!r}: use auto, off, "
        + ", ".join(defaults.CHECKPOINT_POLICIES)
    )
# --- Serving ---------------------------------------------------------------------------------
# Models run in the serving process (`manage.py serve_models`), never in a web worker: the web app
# reaches it at PROSPECT_SERVING_URL (its /api/v1/generate/ and the forwarded /v1/ API).
PROSPECT_SERVING = env_str(
    "PROSPECT_SERVING", "transformers", "transformers: models in the serving process; vllm: drive a vLLM server"
)
if PROSPECT_SERVING not in ("transformers", "vllm"):
    raise ImproperlyConfigured(f"PROSPECT_SERVING={PROSPECT_SERVING!r}: use 'transformers' or 'vllm'")
PROSPECT_INFERENCE_BACKEND = env_str(
    "PROSPECT_INFERENCE_BACKEND",
    {"transformers": "training.serving.TransformersBackend", "vllm": "training.vllm_backend.VLLMBackend"}[
        PROSPECT_SERVING
    ],
    "dotted path of the class that serves model versions (overrides PROSPECT_SERVING)",
    shown="chosen by `PROSPECT_SERVING`",
)
PROSPECT_SERVING_URL = env_str(
    "PROSPECT_SERVING_URL", "http://127.0.0.1:8001", "where the web app and workers reach the serving process"
).rstrip("/")
PROSPECT_SERVING_TOKEN = env_str(
    "PROSPECT_SERVING_TOKEN",
    "",
    "shared secret of the web app and the serving process for internal calls",
    shown="derived from `SECRET_KEY`",
)
PROSPECT_SERVING_TIMEOUT_SECONDS = env_float(
    "PROSPECT_SERVING_TIMEOUT_SECONDS", 300.0, "how long the web app waits for the serving process"
)
PROSPECT_SERVING_MAX_VERSIONS = env_int(
    "PROSPECT_SERVING_MAX_VERSIONS", 2, "model versions held per project at once (active + a canary candidate)"
)
PROSPECT_VLLM_URL = env_str(
    "PROSPECT_VLLM_URL", "http://127.0.0.1:8100", "the vLLM OpenAI server driven with PROSPECT_SERVING=vllm"
).rstrip("/")
PROSPECT_VLLM_API_KEY = env_str("PROSPECT_VLLM_API_KEY", "", "the vLLM server's --api-key, if it has one")
PROSPECT_VLLM_RELOAD_COMMAND = env_str(
    "PROSPECT_VLLM_RELOAD_COMMAND",
    "",
    "a command that restarts vLLM on a full-weight version's directory ({path}); empty: refuse with instructions",
)

# --- Celery ----------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0", "Redis: the broker when it answers and none is set")
# Empty: chosen when the Celery app is configured (config/celery.py): Redis at REDIS_URL if it
# answers, else kombu's filesystem transport under PROSPECT_BROKER_DIR (one machine only).
CELERY_BROKER_URL = env_str(
    "CELERY_BROKER_URL",
    "",
    "the broker; set it in production so web and workers agree",
    shown="Redis if it answers, else files in `var/broker/`",
)
PROSPECT_BROKER_DIR = DATA_DIR / "broker"
# Two installations may share one Redis: each one's keys and queues live under its own prefix
# (config/celery.py), and every task carries this id and refuses to run under another.
PROSPECT_INSTALLATION_ID = (
    env_str(
        "PROSPECT_INSTALLATION_ID",
        "",
        "names this installation's broker keys and queues; set the same value on every host of one installation",
        shown="derived from `PROSPECT_DATA_DIR` and the database name",
    )
    or hashlib.sha256(f"{DATA_DIR}|{DATABASES['default']['NAME']}".encode()).hexdigest()[:12]
)
if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", PROSPECT_INSTALLATION_ID):
    raise ImproperlyConfigured(
        f"PROSPECT_INSTALLATION_ID={PROSPECT_INSTALLATION_ID!r}: use 1-64 letters, digits, . _ -"
    )

# Time limits. The longest a run's task can take: training (PROSPECT_MAX_RUN_SECONDS), then an
# adapter merge and the gate's measurements — at most eight with every judge that measures at once
# (held-out outputs and the LLM judge's extra ones for both versions, heldout evaluate and demo
# accuracy for both) — each bounded by PROSPECT_EVAL_TIMEOUT_SECONDS; plus slack for the
# bookkeeping around them. The broker's visibility timeout is derived from it.
RUN_STEPS_AFTER_TRAINING = 9
TASK_SLACK_SECONDS = 600
RUN_TASK_SOFT_TIME_LIMIT = (
    PROSPECT_MAX_RUN_SECONDS + RUN_STEPS_AFTER_TRAINING * PROSPECT_EVAL_TIMEOUT_SECONDS + TASK_SLACK_SECONDS
)
RUN_TASK_TIME_LIMIT = RUN_TASK_SOFT_TIME_LIMIT + 300
# Evaluating a candidate again: the merge and the gate, no training.
EVALUATE_TASK_SOFT_TIME_LIMIT = RUN_STEPS_AFTER_TRAINING * PROSPECT_EVAL_TIMEOUT_SECONDS + TASK_SLACK_SECONDS
EVALUATE_TASK_TIME_LIMIT = EVALUATE_TASK_SOFT_TIME_LIMIT + 300
# Every other task (scheduling, reaping, sampling for the annotation queue).
CELERY_TASK_SOFT_TIME_LIMIT = env_int(
    "PROSPECT_TASK_TIME_LIMIT_SECONDS",
    1800,
    "soft time limit of the short tasks (scheduling, snapshots, sampling); the hard limit is 60 s later",
)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 60
# An unacknowledged message (late ack) goes back to the queue after this long: longer than the
# longest task, or a second worker would start a run the first still trains.
BROKER_VISIBILITY_TIMEOUT = max(RUN_TASK_TIME_LIMIT, EVALUATE_TASK_TIME_LIMIT, CELERY_TASK_TIME_LIMIT) + 3600
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_TIMEOUT = 5
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "training.tasks.run_training": {"queue": "gpu"},
    "training.tasks.evaluate_candidate": {"queue": "gpu"},
    "training.tasks.check_waiting_gates": {"queue": "default"},
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

# --- Operations ------------------------------------------------------------------------------
PROSPECT_METRICS_TOKEN = env_str(
    "PROSPECT_METRICS_TOKEN", "", "bearer token /metrics asks for; unset: /metrics answers localhost only"
)

# One JSON object a line when DEBUG is off (log shippers parse it); readable lines on a laptop.
LOG_JSON = env_bool("PROSPECT_LOG_JSON", not DEBUG, "JSON log lines", shown="on when `DEBUG` is off")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"refusals_without_traceback": {"()": "config.logs.RefusalsWithoutTraceback"}},
    "formatters": {"json": {"()": "config.logs.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", **({"formatter": "json"} if LOG_JSON else {})}},
    # Django logs each refused request (403 above all) with its traceback: one line is enough.
    "loggers": {"django.request": {"filters": ["refusals_without_traceback"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO", "log level of every process")},
}
