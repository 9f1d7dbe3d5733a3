"""One settings module. Every value is read from the environment, with embedded defaults that run with
nothing installed: SQLite, Celery over a SQLite-backed kombu transport, local media folder, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    """The variable's value; an empty value (an exported but blank `DATABASE_URL=`) counts as unset."""
    return os.environ.get(name) or default


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


#: Everything the platform writes locally (SQLite files, broker, media, model cache) lives under here. Nothing is
#: written when the settings load: each writer makes its folder when it first writes (the SQLite engine in
#: config/sqlite, Celery's SQLite broker in config/celery.py, the storage, the model and log folders).
VAR_DIR = Path(env("CXR_VAR_DIR", str(BASE_DIR / "var"))).resolve()

DEBUG = env_bool("DJANGO_DEBUG", False)
#: Django's signing key (sessions, CSRF tokens), and CXR_PSEUDONYM_KEY's unless that is set.
#: Development (DJANGO_DEBUG=1) may run on the published placeholder; anything else refuses to start without a key.
INSECURE_SECRET_KEY = "dev-only-insecure-key-change-me-in-production-0123456789"
SECRET_KEY = env("DJANGO_SECRET_KEY", INSECURE_SECRET_KEY)
if not DEBUG and SECRET_KEY == INSECURE_SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is not set and DEBUG is off: set DJANGO_SECRET_KEY to a long random value kept secret, "
        "e.g. export DJANGO_SECRET_KEY=\"$(python -c 'import secrets; print(secrets.token_urlsafe(50))')\" "
        "(scripts/demo.sh makes one for its var folder; DJANGO_DEBUG=1 runs on a development key)."
    )
ALLOWED_HOSTS = [h for h in env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env("DJANGO_CSRF_TRUSTED_ORIGINS").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "annotation",
    "training",
    "inference",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "annotation.middleware.RejectNulMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
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
                "annotation.dashboard.navigation.navigation",
            ]
        },
    }
]

# --- database -------------------------------------------------------------------------------------------------
DATABASE_URL = env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite ignores row locks: IMMEDIATE transactions take the write lock up front, so concurrent claims
    # queue behind each other (busy timeout) instead of failing with "database is locked" mid-transaction.
    # Connections stay open (DB_CONN_MAX_AGE): closing the last connection to a WAL database checkpoints and
    # fsyncs on every request (bench/portal.py measured 12-16 ms per request for that alone).
    DATABASES["default"]["ENGINE"] = "config.sqlite"  # Django's backend with a fair write lock (config/sqlite/base.py)
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [  # Django's four: a password set through an invitation (or the admin) must pass them
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "portal:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- files ----------------------------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "/media-not-served/"  # media is never served directly: readers get blinded, per-task URLs
STORAGE_BACKEND = env("STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage")
STORAGES = {
    "default": {"BACKEND": STORAGE_BACKEND},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage" if not DEBUG
                    else "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if STORAGE_BACKEND.startswith("storages.backends.s3"):
    AWS_STORAGE_BUCKET_NAME = env("S3_BUCKET")
    AWS_S3_ENDPOINT_URL = env("S3_ENDPOINT_URL") or None
    AWS_DEFAULT_ACL = None
    AWS_QUERYSTRING_AUTH = True
#: Workers keep local copies of what they load from storage (weights, checkpoints) here.
CXR_CACHE_DIR = Path(env("CXR_CACHE_DIR", str(VAR_DIR / "cache")))
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- uploads and import limits ---------------------------------------------------------------------------------
CXR_MAX_FILE_MB = env_int("CXR_MAX_FILE_MB", 64)
CXR_MAX_PIXELS = env_int("CXR_MAX_PIXELS", 40_000_000)
CXR_MAX_ARCHIVE_ENTRIES = env_int("CXR_MAX_ARCHIVE_ENTRIES", 20_000)
CXR_MAX_ARCHIVE_MB = env_int("CXR_MAX_ARCHIVE_MB", 8192)
#: Key of the keyed hashes kept instead of DICOM identifiers (original SOP Instance UID for duplicates, patient ID
#: for patient-grouped splits). Keep it fixed for a deployment: a new key makes earlier imports unmatchable.
CXR_PSEUDONYM_KEY = env("CXR_PSEUDONYM_KEY", "pseudonym:" + SECRET_KEY)
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# --- reading ---------------------------------------------------------------------------------------------------
#: A claimed task untouched for this long returns to the pool.
CXR_CLAIM_TIMEOUT_S = env_int("CXR_CLAIM_TIMEOUT_S", 30 * 60)
#: Failed logins per username+address within the window before login is refused for the window.
CXR_LOGIN_MAX_FAILURES = env_int("CXR_LOGIN_MAX_FAILURES", 5)
CXR_LOGIN_WINDOW_S = env_int("CXR_LOGIN_WINDOW_S", 15 * 60)

# --- cache (login throttling, worker-side small state) -----------------------------------------------------------
REDIS_URL = env("REDIS_URL")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "cxr"}}
#: Sessions: read from the shared cache when there is one (Redis: a logout reaches every web process at once) and
#: written through to the database, so a request costs no session SELECT; without a shared cache, the database only
#: (a per-process cache would keep a logged-out session alive in the other processes).
SESSION_ENGINE = "django.contrib.sessions.backends." + ("cached_db" if REDIS_URL else "db")

# --- celery ----------------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL or f"sqla+sqlite:///{VAR_DIR / 'broker.sqlite3'}")
CELERY_RESULT_BACKEND = env(
    "CELERY_RESULT_BACKEND", REDIS_URL or f"db+sqlite:///{VAR_DIR / 'celery-results.sqlite3'}"
)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Above the longest GPU task's time limit, so a running task is never handed to a second worker.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT_S", 6 * 3600)}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
#: The one set of GPU tasks: routed to the "gpu" queue with the hard time limit below (late acknowledgement and
#: re-queueing on a lost worker, above, hold for every task).
CXR_GPU_TASKS = ("inference.tasks.generation_batch_run", "training.tasks.training_run_execute",
                 "annotation.tasks.round_clean", "annotation.tasks.round_evaluate")
CELERY_TASK_ROUTES = {name: {"queue": "gpu"} for name in CXR_GPU_TASKS}
#: Hard limit of one GPU task (generation batch, training run, cleaning, evaluating); below the visibility timeout.
CXR_GPU_TASK_TIME_LIMIT_S = env_int("CXR_GPU_TASK_TIME_LIMIT_S", 5 * 3600)
CELERY_TASK_ANNOTATIONS = {name: {"time_limit": CXR_GPU_TASK_TIME_LIMIT_S} for name in CXR_GPU_TASKS}
#: A running stage whose heartbeat is older than this is sent again by the reconciler (lost message, dead worker).
CXR_STAGE_TIMEOUT_S = env_int("CXR_STAGE_TIMEOUT_S", 15 * 60)
CXR_RECONCILE_EVERY_S = env_int("CXR_RECONCILE_EVERY_S", 60)
#: Webhook deliveries: attempts before giving up, first retry delay (doubling), per-request timeout.
CXR_WEBHOOK_MAX_ATTEMPTS = env_int("CXR_WEBHOOK_MAX_ATTEMPTS", 6)
CXR_WEBHOOK_BACKOFF_S = float(env("CXR_WEBHOOK_BACKOFF_S", "10"))
CXR_WEBHOOK_TIMEOUT_S = float(env("CXR_WEBHOOK_TIMEOUT_S", "10"))
CELERY_BEAT_SCHEDULE = {
    "expire-stale-claims": {"task": "annotation.tasks.claims_expire_stale", "schedule": 60.0},
    "reconcile-rounds": {"task": "annotation.tasks.rounds_reconcile", "schedule": float(CXR_RECONCILE_EVERY_S)},
}

# --- REST ------------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotation.api.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"login": "10/min"},
    "URL_FORMAT_OVERRIDE": None,  # ?format= selects an export format, not a renderer
}
SPECTACULAR_SETTINGS = {
    "TITLE": "cxr-loop API", "VERSION": "1.0.0", "SERVE_INCLUDE_SCHEMA": False,
    "DESCRIPTION": (
        "Studies, rounds, labels, exports and model versions of the expert-in-the-loop platform.\n\n"
        "**Authenticating.** Signed in to the site in this browser, the docs' *Try it out* uses your session. "
        "Scripts send a token: `Authorization: Bearer cxr_…`. A token is made on the server with "
        "`python manage.py api_token --user NAME --scope read|export|admin` (printed once; only its hash is "
        "stored; revoke with `--revoke PREFIX`). Scopes: *read* — a reader's own tasks; *export* — read-only "
        "access to the studies the user administers; *admin* — export plus study setup, round actions and "
        "webhooks. Press **Authorize** above and paste the token to try the endpoints with it.\n\n"
        "Labels stream from `GET /api/v1/studies/{id}/export/?format=csv|jsonl|pairs`; Parquet, image folders, "
        "Hugging Face preference pairs and MRMC tables are export jobs (`POST /api/v1/exports/`, then poll and "
        "download)."),
    # the docs UI's assets come from drf-spectacular-sidecar's static files: no CDN
    "SWAGGER_UI_DIST": "SIDECAR", "SWAGGER_UI_FAVICON_HREF": "SIDECAR", "REDOC_DIST": "SIDECAR",
}

# --- models ----------------------------------------------------------------------------------------------------
#: "auto" picks xpu → cuda → mps → cpu; or name one.
CXR_DEVICE = env("CXR_DEVICE", "auto")
#: Where built tiny models live (made on first use, offline).
CXR_MODELS_DIR = Path(env("CXR_MODELS_DIR", str(VAR_DIR / "models")))
#: Tiny bases pretrained offline and shipped in the repository (tiny-domain: the loop's and the proofs' 64-px base;
#: tiny-demo: the demo's 128-px base; rebuilt by `manage.py build_tiny_bases`): copied under CXR_MODELS_DIR
#: when first used instead of being trained on each machine.
CXR_WEIGHTS_DIR = Path(env("CXR_WEIGHTS_DIR", str(BASE_DIR / "weights")))
#: Base text-to-image pipeline: a local SD v2-1-base diffusers folder or single-file checkpoint; empty = tiny model.
CXR_BASE_MODEL = env("CXR_BASE_MODEL")
#: Inpainting pipeline for cleaning: a local SD2-inpainting folder, "tiny", or empty for OpenCV (Telea).
CXR_INPAINT_MODEL = env("CXR_INPAINT_MODEL")
#: Segment Anything: kind (vit_b, vit_l, vit_h, tiny) and checkpoint path; empty path = no SAM refinement.
CXR_SAM_KIND = env("CXR_SAM_KIND", "vit_b")
CXR_SAM_CHECKPOINT = env("CXR_SAM_CHECKPOINT")
#: Diffusers config folder used to read single-file checkpoints (nothing can be fetched from a hub).
CXR_SINGLE_FILE_CONFIG = env("CXR_SINGLE_FILE_CONFIG")
#: Image metrics: the standard FID InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth) and an optional
#: chest-X-ray feature extractor (a timm model name + local weights) for the domain FID; empty = skipped.
CXR_FID_WEIGHTS = env("CXR_FID_WEIGHTS")
CXR_DOMAIN_FEATURES_MODEL = env("CXR_DOMAIN_FEATURES_MODEL")
CXR_DOMAIN_FEATURES_WEIGHTS = env("CXR_DOMAIN_FEATURES_WEIGHTS")
#: Generation defaults (seed paper: CFG 4, 75 steps, 512 px); the tiny preset when no base model is set.
CXR_GENERATION = {
    "guidance_scale": float(env("CXR_GUIDANCE_SCALE", "4")),
    "steps": env_int("CXR_STEPS", 75),
    "height": env_int("CXR_IMAGE_SIZE", 512),
    "width": env_int("CXR_IMAGE_SIZE", 512),
    "batch_size": env_int("CXR_GENERATION_BATCH", 4),
}

# --- security headers (production sets DJANGO_SECURE=1 behind TLS) --------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"  # "no-referrer" makes Chromium send Origin: null, failing CSRF
if env_bool("DJANGO_SECURE", False):
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "WARNING")},
    "loggers": {"cxr": {"level": env("LOG_LEVEL", "INFO")}},
}
