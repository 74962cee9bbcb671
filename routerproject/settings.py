"""Settings, all from the environment with safe local defaults.

Local: SQLite file beside the project, in-process routing state, a fixed
development encryption key (warned about). Production: DATABASE_URL (Postgres,
pooled), REDIS_URL, ROUTER_ENCRYPTION_KEY, DJANGO_SECRET_KEY.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be a boolean (true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


DEBUG = env_bool("DEBUG")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "insecure-local-only-secret-key-change-me-in-production"
_hosts = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
ALLOWED_HOSTS = [h.strip() for h in _hosts.split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]
# Behind a TLS-terminating proxy (nginx, Caddy, a load balancer) that sets X-Forwarded-Proto and
# X-Forwarded-Host: requests count as HTTPS (the admin's CSRF origin check passes) and cookies are
# secure. Only when the proxy overwrites those headers: a client could otherwise forge them.
ROUTER_BEHIND_TLS_PROXY = env_bool("ROUTER_BEHIND_TLS_PROXY")
if ROUTER_BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    USE_X_FORWARDED_HOST = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

INSTALLED_APPS = [
    "credentials",  # before daphne: its runserver subclass listens on 8080
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served by the router itself (no CDN)
    "proxy",
    "observability",
    "keys",
    "pricing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "routerproject.urls"
ASGI_APPLICATION = "routerproject.asgi.application"

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
            ],
        },
    },
]

# An empty DATABASE_URL counts as unset (dj-database-url would fail on it).
if not os.environ.get("DATABASE_URL"):
    os.environ.pop("DATABASE_URL", None)
DATABASES = {
    "default": dj_database_url.config(default=f"sqlite:///{BASE_DIR / 'router.sqlite3'}", conn_max_age=0)
}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # ASGI: no persistent connections; psycopg's pool instead.
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 1, "max_size": env_int("DB_POOL_MAX", 10), "timeout": 10}}
else:
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every start without it
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # admin CSS works without collectstatic in local runs

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Auto AI Router management API",
    "DESCRIPTION": "Keys, teams and spend (LiteLLM-compatible routes). Authenticate with the master key "
                   "(`Authorization: Bearer …`) or an admin session.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# ---- router ------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL") or None
# Comma-separated Fernet keys (or passphrases); the first encrypts, all decrypt.
ROUTER_ENCRYPTION_KEY = os.environ.get("ROUTER_ENCRYPTION_KEY", "")
ROUTER_MASTER_KEY = os.environ.get("ROUTER_MASTER_KEY") or None
ROUTER_HOST = os.environ.get("ROUTER_HOST") or "127.0.0.1"  # runserver (scripts/run) listens here
ROUTER_PORT = env_int("ROUTER_PORT", 8080)
# the ASGI server (routerproject/servers.py): "uvicorn" (uvloop + httptools) or "daphne"; uvicorn is the
# default because it costs about a third less CPU per request and has the shorter tail (bench/run.py)
ROUTER_SERVER = os.environ.get("ROUTER_SERVER", "").strip().lower() or "uvicorn"
# one line per request (client, method, path with secrets redacted, status, duration) under either
# server; off by default: usage rows already record each API request, and the line costs CPU
ROUTER_ACCESS_LOG = env_bool("ROUTER_ACCESS_LOG")
# manage.py serve: worker processes on one socket (0: one per core); share state through REDIS_URL
ROUTER_WORKERS = env_int("ROUTER_WORKERS", 0)
ROUTER_MAX_BODY_BYTES = env_int("ROUTER_MAX_BODY_BYTES", 32 * 1024 * 1024)
# request bodies being read and parsed at once, in bytes; past it a request waits, then gets 503
ROUTER_BODY_BUDGET_BYTES = env_int("ROUTER_BODY_BUDGET_BYTES", 256 * 1024 * 1024)
ROUTER_BODY_BUDGET_WAIT = env_float("ROUTER_BODY_BUDGET_WAIT", 2.0)
# slow clients (see proxy/server_limits.py): a request's headers, then its body, must arrive within these
ROUTER_HEADER_TIMEOUT = env_float("ROUTER_HEADER_TIMEOUT", 10.0)
ROUTER_BODY_TIMEOUT = env_float("ROUTER_BODY_TIMEOUT", 30.0)
ROUTER_MAX_CONNECTIONS = env_int("ROUTER_MAX_CONNECTIONS", 4096)  # open client connections per process
ROUTER_CONNECT_TIMEOUT = env_float("ROUTER_CONNECT_TIMEOUT", 10.0)
ROUTER_FIRST_BYTE_TIMEOUT = env_float("ROUTER_FIRST_BYTE_TIMEOUT", 300.0)
ROUTER_IDLE_TIMEOUT = env_float("ROUTER_IDLE_TIMEOUT", 300.0)
ROUTER_KEEPALIVE_INTERVAL = env_float("ROUTER_KEEPALIVE_INTERVAL", 10.0)
ROUTER_CONFIG_POLL_SECONDS = env_float("ROUTER_CONFIG_POLL_SECONDS", 1.0)
ROUTER_MODEL_DISCOVERY_SECONDS = env_float("ROUTER_MODEL_DISCOVERY_SECONDS", 300.0)
ROUTER_USAGE_LOGGING = env_bool("ROUTER_USAGE_LOGGING", True)
ROUTER_USAGE_MAX_PENDING = env_int("ROUTER_USAGE_MAX_PENDING", 100_000)
ROUTER_USAGE_FLUSH_SECONDS = env_float("ROUTER_USAGE_FLUSH_SECONDS", 1.0)
ROUTER_USAGE_DEGRADED_PENDING = env_int("ROUTER_USAGE_DEGRADED_PENDING", 10_000)  # /health degraded past this queue
# rows the database cannot take now wait here (JSON lines, replayed in order, at the next start too)
# on SIGTERM: how long requests in flight get to finish before they are ended with a server_shutdown error
ROUTER_SHUTDOWN_GRACE_SECONDS = env_float("ROUTER_SHUTDOWN_GRACE_SECONDS", 30.0)
ROUTER_USAGE_SPOOL_DIR = os.environ.get("ROUTER_USAGE_SPOOL_DIR") or str(BASE_DIR / "data" / "usage-spool")
ROUTER_HTTP_TRANSPORT = os.environ.get("ROUTER_HTTP_TRANSPORT", "aiohttp")  # or "httpx"
ROUTER_MAX_ATTEMPTS = env_int("ROUTER_MAX_ATTEMPTS", 3)  # per alias target
ROUTER_MAX_HOPS = env_int("ROUTER_MAX_HOPS", 5)  # router chains: more hops than this is a loop (508)
ROUTER_PROBE_INTERVAL = env_float("ROUTER_PROBE_INTERVAL", 1.0)  # when all are cooling down: one probe per interval
ROUTER_LIMIT_WINDOW_SECONDS = env_float("ROUTER_LIMIT_WINDOW_SECONDS", 60.0)  # RPM/TPM sliding window
ROUTER_REDIS_PREFIX = os.environ.get("ROUTER_REDIS_PREFIX", "{air}:")
ROUTER_REDIS_TIMEOUT = env_float("ROUTER_REDIS_TIMEOUT", 0.5)
ROUTER_REDIS_RETRY_SECONDS = env_float("ROUTER_REDIS_RETRY_SECONDS", 5.0)  # reconnect attempts while Redis is down
ROUTER_STATE_SYNC_SECONDS = env_float("ROUTER_STATE_SYNC_SECONDS", 1.0)  # shared cooldown mirror refresh
# Client-key budgets: a request in flight holds its estimated cost at most this long (a crashed process's
# reservations then lapse); output tokens reserved when the request does not say (max_tokens...).
ROUTER_BUDGET_RESERVATION_SECONDS = env_float("ROUTER_BUDGET_RESERVATION_SECONDS", 900.0)
ROUTER_BUDGET_DEFAULT_MAX_TOKENS = env_int("ROUTER_BUDGET_DEFAULT_MAX_TOKENS", 4096)
# Image URLs that Gemini cannot fetch itself are downloaded by the router (bounded; no private hosts).
ROUTER_MEDIA_MAX_BYTES = env_int("ROUTER_MEDIA_MAX_BYTES", 20 * 1024 * 1024)
ROUTER_MEDIA_TIMEOUT = env_float("ROUTER_MEDIA_TIMEOUT", 20.0)
ROUTER_MEDIA_ALLOW_PRIVATE = env_bool("ROUTER_MEDIA_ALLOW_PRIVATE")
# Prometheus /metrics: on by default (tens of microseconds per request); scraped with the token or the master key.
ROUTER_METRICS = env_bool("ROUTER_METRICS", True)
ROUTER_METRICS_TOKEN = os.environ.get("ROUTER_METRICS_TOKEN") or None
ROUTER_METRICS_PUBLIC = env_bool("ROUTER_METRICS_PUBLIC")  # serve /metrics without a token (a private network)
# Retention (0 keeps forever): raw usage rows, and the hourly rollups the dashboard reads.
ROUTER_USAGE_RETENTION_DAYS = env_int("ROUTER_USAGE_RETENTION_DAYS", 0)
ROUTER_ROLLUP_RETENTION_DAYS = env_int("ROUTER_ROLLUP_RETENTION_DAYS", 0)
ROUTER_RETENTION_INTERVAL_SECONDS = env_float("ROUTER_RETENTION_INTERVAL_SECONDS", 3600.0)
# /v1/images/edits uploads: the size of each image (and mask) and how many images one request may carry.
ROUTER_IMAGE_MAX_BYTES = env_int("ROUTER_IMAGE_MAX_BYTES", 20 * 1024 * 1024)
ROUTER_IMAGE_MAX_FILES = env_int("ROUTER_IMAGE_MAX_FILES", 16)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact": {"()": "proxy.logging.RedactSecretsFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["redact"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # httpx logs full URLs at INFO; keep transports quiet.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "uvicorn": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
    },
}

TESTING = "pytest" in sys.modules
