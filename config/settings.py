"""Prospect settings: the one settings module. Everything comes from the environment.

Each variable is read once, here, with its default named once: the training numbers come from
training/kto/defaults.py (the paper's recommendations), the rest are written below. The README's
configuration table is generated from these reads (scripts/config_table.py) and checked by a test.
Importing this module has no side effects: no directory is created and nothing is connected to
(the Celery broker is chosen when the Celery app is first configured, see config/celery.py).
"""
from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_int, env_list, env_str
from training.kto import defaults

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DEBUG", True, "Django's debug mode; off in production")
SECRET_KEY = env_str("SECRET_KEY", "", "required when `DEBUG` is off", shown="a dev key while `DEBUG` is on")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    # Only for a laptop run with DEBUG on; production refuses to start without a real key.
    SECRET_KEY = "insecure-dev-key-prospect-do-not-use-in-production"

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"],
                         "comma-separated host names the web app answers to")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [], "comma-separated origins trusted for CSRF (behind a proxy)")

# Where snapshots, run artifacts and the embedded broker live. Artifacts are never overwritten.
DATA_DIR = Path(env_str("PROSPECT_DATA_DIR", str(BASE_DIR / "var"),
                        "snapshots, run artifacts, SQLite database, embedded broker",
                        shown="`var/` in the repository")).resolve()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
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
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "config.middleware.StaffOnlyAdminMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
        env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}",
                "any dj-database-url URL; Postgres in production", shown="SQLite in `PROSPECT_DATA_DIR`"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0, "seconds a database connection is kept (0: per request)"),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one SQLite file in the demo: wait for the lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC", "time zone of the pages")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"

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
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Prospect API",
    "DESCRIPTION": "Send generations and thumbs up/down; call the deployed model.",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Feedback ------------------------------------------------------------------------------
VOTES_PER_ITEM = env_int("PROSPECT_VOTES_PER_ITEM", 1, "votes an item needs before it leaves the annotation queue")
IMPORT_MAX_LINE_BYTES = env_int("PROSPECT_IMPORT_MAX_LINE_BYTES", 1_000_000,
                                "largest accepted line of an imported JSONL file, in bytes")
QUEUE_CLAIM_SECONDS = env_int("PROSPECT_QUEUE_CLAIM_SECONDS", 300,
                              "how long an annotator holds an item before another may be served it")
# --- Projects and API keys ----------------------------------------------------------------
PROSPECT_DEFAULT_PROJECT = env_str("PROSPECT_DEFAULT_PROJECT", "demo",
                                   "the project a fresh installation gets, and that commands use without --project")
PROSPECT_API_DEFAULT_RATE = env_str("PROSPECT_API_DEFAULT_RATE", "",
                                    "requests per key, e.g. 100/s or 6000/min, for keys without their own rate "
                                    "(empty: unlimited)")

# --- Snapshots: the dataset and its class weights λ_D / λ_U ----------------------------------
KTO_TARGET_RATIO = env_float("PROSPECT_KTO_TARGET_RATIO", defaults.TARGET_RATIO,
                             "λ_D·n_D/(λ_U·n_U) aimed at when the data is outside [1, 3/2] (paper Eq. 7)")
SNAPSHOT_HOLDOUT = env_float("PROSPECT_SNAPSHOT_HOLDOUT", defaults.SNAPSHOT_HOLDOUT,
                             "share of prompts held out of training for the gate (split by prompt)")

# --- Defaults of the admin-editable TrainingPolicy row (the admin's values win afterwards) ----
PROSPECT_BASE_MODEL = env_str("PROSPECT_BASE_MODEL", "",
                              "local save_pretrained directory of the first active version "
                              "(`make demo` uses the offline demo model)")
PROSPECT_RETRAIN_ENABLED = env_bool("PROSPECT_RETRAIN_ENABLED", True, "retrain automatically when enough new votes arrived")
PROSPECT_RETRAIN_MIN_NEW_VOTES = env_int("PROSPECT_RETRAIN_MIN_NEW_VOTES", 50, "new votes since the last snapshot that start a run")
PROSPECT_RETRAIN_COOLDOWN_SECONDS = env_int("PROSPECT_RETRAIN_COOLDOWN_SECONDS", 3600,
                                            "least time between the starts of two automatic runs")
PROSPECT_RETRAIN_CHECK_SECONDS = env_int("PROSPECT_RETRAIN_CHECK_SECONDS", 60,
                                         "how often beat asks whether to retrain (when first installed)")
PROSPECT_TRAIN_LORA = env_bool("PROSPECT_TRAIN_LORA", False, "train a LoRA adapter instead of full weights")
PROSPECT_TRAIN_LOSS = env_str("PROSPECT_TRAIN_LOSS", "kto", "the loss: KTO, an ablation or a baseline")
PROSPECT_TRAIN_BETA = env_float("PROSPECT_TRAIN_BETA", defaults.PAPER_BETA, "β")
PROSPECT_TRAIN_LEARNING_RATE = env_float("PROSPECT_TRAIN_LEARNING_RATE", defaults.PAPER_LEARNING_RATE, "learning rate")
PROSPECT_TRAIN_EPOCHS = env_float("PROSPECT_TRAIN_EPOCHS", 1.0, "epochs over the snapshot's training split")
PROSPECT_TRAIN_MAX_STEPS = env_int("PROSPECT_TRAIN_MAX_STEPS", 0, "cap on optimizer steps (0: no cap)")
PROSPECT_TRAIN_BATCH_SIZE = env_int("PROSPECT_TRAIN_BATCH_SIZE", defaults.PAPER_MICROBATCH,
                                    "microbatch per process (KTO's z0 needs at least 2)")
PROSPECT_TRAIN_GRAD_ACCUM = env_int("PROSPECT_TRAIN_GRAD_ACCUM", defaults.PAPER_EFFECTIVE_BATCH // defaults.PAPER_MICROBATCH,
                                    "microbatches per optimizer step (the paper's effective batch of 32)")
PROSPECT_TRAIN_MAX_LENGTH = env_int("PROSPECT_TRAIN_MAX_LENGTH", defaults.TRL_MAX_LENGTH,
                                    "longest prompt + completion in tokens")
PROSPECT_TRAIN_LAMBDA_MODE = env_str("PROSPECT_TRAIN_LAMBDA_MODE", "auto",
                                     "how a snapshot's λ_D / λ_U are chosen: auto, downside_first or manual")
PROSPECT_TRAIN_SEED = env_int("PROSPECT_TRAIN_SEED", 0, "seed of the data order, the holdout split and the judge's prompts")
PROSPECT_PROMOTE_MARGIN = env_float("PROSPECT_PROMOTE_MARGIN", 0.01,
                                    "how much better a candidate must be to be auto-promoted")
PROSPECT_GATE_JUDGE = env_str("PROSPECT_GATE_JUDGE", "demo",
                              "demo: judge generated outputs with the demo task's annotator; none: holdout only")
PROSPECT_GATE_JUDGE_PROMPTS = env_int("PROSPECT_GATE_JUDGE_PROMPTS", 64, "held-out prompts the judge scores")

# --- Runs ------------------------------------------------------------------------------------
PROSPECT_MAX_RUN_SECONDS = env_int("PROSPECT_MAX_RUN_SECONDS", 6 * 3600,
                                   "a run is killed (whole process group) after this")
PROSPECT_RUN_POLL_SECONDS = env_float("PROSPECT_RUN_POLL_SECONDS", 2.0,
                                      "how often the runner mirrors a run's progress and heartbeats")
PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS = env_int("PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS", 300,
                                                 "a running run silent this long is declared dead by the reaper")
PROSPECT_EVAL_TIMEOUT_SECONDS = env_int("PROSPECT_EVAL_TIMEOUT_SECONDS", 3600,
                                        "time limit of each gate measurement and adapter merge")
PROSPECT_TRAIN_LAUNCHER = env_str("PROSPECT_TRAIN_LAUNCHER", "accelerate",
                                  "accelerate: `accelerate launch`; python: one plain process")
if PROSPECT_TRAIN_LAUNCHER not in ("accelerate", "python"):
    raise ImproperlyConfigured(f"PROSPECT_TRAIN_LAUNCHER={PROSPECT_TRAIN_LAUNCHER!r}: use 'accelerate' or 'python'")
PROSPECT_ACCELERATE_CONFIG = env_str("PROSPECT_ACCELERATE_CONFIG", "",
                                     "an accelerate config file (multi-GPU, FSDP, DeepSpeed)")
PROSPECT_NUM_PROCESSES = env_int("PROSPECT_NUM_PROCESSES", 1, "training processes per run")
PROSPECT_INFERENCE_BACKEND = env_str("PROSPECT_INFERENCE_BACKEND", "training.serving.TransformersBackend",
                                     "dotted path of the class that serves the active version")

# --- Celery ----------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0", "Redis: the broker when it answers and none is set")
# Empty: chosen when the Celery app is configured (config/celery.py): Redis at REDIS_URL if it
# answers, else kombu's filesystem transport under PROSPECT_BROKER_DIR (one machine only).
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "",
                            "the broker; set it in production so web and workers agree",
                            shown="Redis if it answers, else files in `var/broker/`")
PROSPECT_BROKER_DIR = DATA_DIR / "broker"
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

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO", "log level of every process")},
}
