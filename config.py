"""Configuration classes, chosen by the ``APP_ENV`` environment variable.

Every value is read from the environment with a default, so importing this module never
fails; production validates its secrets when the app is created (``Production.validate``).
"""

import os
import secrets
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

# Secrets shorter than this are refused in production: HS256 keys should carry >= 256 bits.
MIN_SECRET_LENGTH = 32
WEAK_SECRETS = {"dev", "secret", "changeme", "change-me", "password", "test", "jwt-secret"}


def env_bool(name, default):
    """Read a boolean environment variable the way people write them (true/1/yes/on)."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name, default):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name, default):
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def env_list(name):
    """Comma-separated list, blanks dropped."""
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


class Config:
    """Defaults shared by every environment (embedded parts: SQLite, memory rate limits)."""

    APP_ENV = "development"
    SECRET_KEY = os.environ.get("SECRET_KEY")
    JWT_SECRET_KEY = os.environ.get("JWT_SECRET_KEY")
    # None means: a SQLite file in the instance folder (resolved in create_app).
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL")
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}

    JWT_ACCESS_TOKEN_EXPIRES = timedelta(minutes=env_int("JWT_ACCESS_MINUTES", 15))
    JWT_REFRESH_TOKEN_EXPIRES = timedelta(days=env_int("JWT_REFRESH_DAYS", 30))
    JWT_ERROR_MESSAGE_KEY = "message"

    # bcrypt's cost (each step doubles the work of a login). Lower only for test servers.
    BCRYPT_LOG_ROUNDS = env_int("BCRYPT_LOG_ROUNDS", 12)

    MAX_CONTENT_LENGTH = env_int("MAX_CONTENT_LENGTH", 5 * 1024 * 1024)
    MAX_FORM_PARTS = 200
    MAX_IMAGE_PIXELS = env_int("MAX_IMAGE_PIXELS", 40_000_000)
    BATCH_MAX_FILES = env_int("BATCH_MAX_FILES", 64)

    RATELIMIT_ENABLED = env_bool("RATELIMIT_ENABLED", True)
    RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI", "memory://")
    RATELIMIT_DEFAULT = os.environ.get("RATELIMIT_DEFAULT", "200 per day;50 per hour")
    RATELIMIT_HEADERS_ENABLED = True
    RATELIMIT_LOGIN = os.environ.get("RATELIMIT_LOGIN", "10 per minute;100 per day")
    RATELIMIT_REGISTER = os.environ.get("RATELIMIT_REGISTER", "20 per hour")
    RATELIMIT_V1_PREDICT = os.environ.get("RATELIMIT_V1_PREDICT", "100 per day")
    RATELIMIT_V2_PREDICT = os.environ.get("RATELIMIT_V2_PREDICT", "150 per day")
    # The review page shows up to 100 images at a time: the default limit would stop it after two pages.
    RATELIMIT_ADMIN_IMAGES = os.environ.get("RATELIMIT_ADMIN_IMAGES", "2000 per hour")
    # Redis storage down: count in this process's memory until it answers again (checked
    # with a growing back-off) instead of leaving every request unlimited.
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = env_bool("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    # A storage error the fallback does not catch is logged and the request let through,
    # not a 500: requests in flight while another thread switches to the fallback fail
    # once (Flask-Limiter switches on the first error and re-raises the others).
    RATELIMIT_SWALLOW_ERRORS = env_bool("RATELIMIT_SWALLOW_ERRORS", True)
    # A Redis that accepts no connection or stops answering must not hang requests.
    REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 5.0)

    MODEL_DIR = os.environ.get("MODEL_DIR", str(BASE_DIR / "models"))
    # How often each worker checks the database for a newly activated model version.
    MODEL_SYNC_SECONDS = env_float("MODEL_SYNC_SECONDS", 1.0)
    # A background thread per process does that check, so swaps need no traffic.
    MODEL_WATCH = env_bool("MODEL_WATCH", True)
    # Load and warm the model when a process starts rather than at its first prediction.
    MODEL_PRELOAD = env_bool("MODEL_PRELOAD", True)
    # Threads one batch may use, for its preprocessing and its inference call (0: one per
    # core); a single image, and an inference of fewer than 8, run on the calling thread
    # alone. With several gunicorn workers on few cores, 1-2 per worker avoids
    # oversubscription.
    INFERENCE_THREADS = env_int("INFERENCE_THREADS", 0)
    # TensorFlow's thread pools in processes that train (retrain jobs, CLI training,
    # ONNX exports); serving never starts TensorFlow.
    TF_INTRA_OP_THREADS = env_int("TF_INTRA_OP_THREADS", 0)
    TF_INTER_OP_THREADS = env_int("TF_INTER_OP_THREADS", 0)
    RETRAIN_MIN_FEEDBACK = env_int("RETRAIN_MIN_FEEDBACK", 20)
    RETRAIN_MAX_REGRESSION = env_float("RETRAIN_MAX_REGRESSION", 0.5)
    RETRAIN_BACKEND = os.environ.get("RETRAIN_BACKEND", "thread")
    RETRAIN_EPOCHS = env_int("RETRAIN_EPOCHS", 6)
    RETRAIN_FROM_SCRATCH = env_bool("RETRAIN_FROM_SCRATCH", False)
    RETRAIN_SEED = env_int("RETRAIN_SEED", 0)
    # A running job that has not reported for this long is taken for dead (its process was
    # killed): it is marked failed so it cannot block retraining forever.
    RETRAIN_STALE_SECONDS = env_int("RETRAIN_STALE_SECONDS", 300)
    RETRAIN_QUEUE = os.environ.get("RETRAIN_QUEUE", "retrain")
    # Poisoning resistance (issue 9; the reasoning behind each default is in the README).
    # The gate refuses a candidate that loses more than this many percentage points on any
    # one digit of the trusted evaluation set (MNIST hold-out + trusted feedback hold-out).
    RETRAIN_MAX_CLASS_REGRESSION = env_float("RETRAIN_MAX_CLASS_REGRESSION", 2.0)
    # No account supplies more than this share of a retrain's training samples (feedback plus
    # the replay digits mixed in), overall or for any one digit; admin-verified labels are
    # exempt. At 1/3 or more a sole labeller whose digits are spread evenly is never cut.
    RETRAIN_MAX_ACCOUNT_SHARE = env_float("RETRAIN_MAX_ACCOUNT_SHARE", 0.35)
    # Probation: a new account's labels count once it is this old OR has given this many
    # labels (enough for the trust score below to judge it).
    TRUST_PROBATION_HOURS = env_float("TRUST_PROBATION_HOURS", 24.0)
    TRUST_PROBATION_LABELS = env_int("TRUST_PROBATION_LABELS", 20)
    # Trust per account: a label is "unsupported" when the live model is at least this
    # confident of another digit and other accounts' nearby labels do not back it (or when
    # other accounts clearly agree on another digit). See app/ml/trust.py.
    TRUST_MODEL_CONFIDENCE = env_float("TRUST_MODEL_CONFIDENCE", 0.75)
    # Cosine similarity of penultimate-layer embeddings for another account's label to count
    # as a neighbour's vote (one vote per account).
    TRUST_NEIGHBOUR_SIMILARITY = env_float("TRUST_NEIGHBOUR_SIMILARITY", 0.95)
    # An account is judged once it has this many labels ...
    TRUST_MIN_LABELS = env_int("TRUST_MIN_LABELS", 20)
    # ... and quarantined when its unsupported rate is at least TRUST_MIN_RATE and more than
    # TRUST_OUTLIER_MADS robust deviations (MAD, floored at TRUST_MIN_SPREAD) above the median
    # of the other judged accounts.
    TRUST_MIN_RATE = env_float("TRUST_MIN_RATE", 0.10)
    TRUST_OUTLIER_MADS = env_float("TRUST_OUTLIER_MADS", 5.0)
    TRUST_MIN_SPREAD = env_float("TRUST_MIN_SPREAD", 0.02)
    REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    # Seconds a PostgreSQL connection attempt may take: an unreachable database answers 503
    # quickly rather than holding a worker thread.
    DATABASE_CONNECT_TIMEOUT = env_int("DATABASE_CONNECT_TIMEOUT", 5)

    MAIL_SERVER = os.environ.get("MAIL_SERVER")
    MAIL_PORT = env_int("MAIL_PORT", 25)
    MAIL_USE_TLS = env_bool("MAIL_USE_TLS", False)
    MAIL_USE_SSL = env_bool("MAIL_USE_SSL", False)
    MAIL_USERNAME = os.environ.get("MAIL_USERNAME")
    MAIL_PASSWORD = os.environ.get("MAIL_PASSWORD")
    MAIL_DEFAULT_SENDER = os.environ.get("MAIL_DEFAULT_SENDER", "digit-service@localhost")
    MAIL_TIMEOUT = env_float("MAIL_TIMEOUT", 10.0)
    ADMIN_EMAILS = env_list("ADMIN_EMAILS")

    LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
    # "json": one JSON object per line (for log shippers); "text" reads better in a terminal.
    LOG_FORMAT = os.environ.get("LOG_FORMAT", "text")
    # Prometheus metrics at /metrics. With a token, scrapers must send it as a bearer token;
    # without one, only loopback may scrape, and production refuses every scrape.
    METRICS_ENABLED = env_bool("METRICS_ENABLED", True)
    METRICS_TOKEN = os.environ.get("METRICS_TOKEN") or None
    # The review queue's "uncertain" list: the live model's predictions from the last this many
    # days that nobody has labelled, least confident first. A week spans a weekly review round.
    REVIEW_UNCERTAIN_DAYS = env_float("REVIEW_UNCERTAIN_DAYS", 7.0)
    # Recent predictions of the live version compared with its held-out digits for drift.
    DRIFT_WINDOW = env_int("DRIFT_WINDOW", 1000)
    # Add an X-Served-By: host:pid header (load tests and benchmarks use it; off by default).
    SERVED_BY_HEADER = env_bool("SERVED_BY_HEADER", False)
    # Number of trusted proxies in front of the app (for the client address used by limits).
    PROXY_FIX_HOPS = env_int("PROXY_FIX_HOPS", 0)

    API_TITLE = "Digit Service"
    API_VERSION = "2.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "openapi.json"
    # Browsable docs for /openapi.json, from the Swagger UI files bundled in the
    # flask-swagger-ui package (no CDN: works behind a firewall).
    API_DOCS_PATH = "/docs"

    @classmethod
    def validate(cls, config):
        """Refuse settings that cannot work; environments add their own checks."""
        if config["LOG_FORMAT"] not in ("text", "json"):
            raise RuntimeError(f"LOG_FORMAT must be 'text' or 'json', not {config['LOG_FORMAT']!r}")
        if not config["REVIEW_UNCERTAIN_DAYS"] > 0:
            raise RuntimeError(f"REVIEW_UNCERTAIN_DAYS must be a positive number of days, not {config['REVIEW_UNCERTAIN_DAYS']!r}")


class Development(Config):
    APP_ENV = "development"


class Testing(Config):
    APP_ENV = "testing"
    TESTING = True
    BCRYPT_LOG_ROUNDS = 4  # cheap hashes keep the suite fast
    # Random per process unless given: test servers started as subprocesses get them via env.
    SECRET_KEY = os.environ.get("SECRET_KEY") or secrets.token_urlsafe(48)
    JWT_SECRET_KEY = os.environ.get("JWT_SECRET_KEY") or secrets.token_urlsafe(48)
    SQLALCHEMY_DATABASE_URI = "sqlite://"  # tests pass a file or a PostgreSQL database
    RATELIMIT_ENABLED = False
    MAIL_SUPPRESS_SEND = True


class Production(Config):
    APP_ENV = "production"
    # Refused at start-up below unless they come from the environment.

    @classmethod
    def validate(cls, config):
        """Refuse to start without strong secrets: a default here would be a working key."""
        super().validate(config)
        problems = []
        for name in ("SECRET_KEY", "JWT_SECRET_KEY"):
            value = config.get(name)
            if not value:
                problems.append(f"{name} is not set")
            elif len(value) < MIN_SECRET_LENGTH or value.lower() in WEAK_SECRETS:
                problems.append(f"{name} is too weak (use at least {MIN_SECRET_LENGTH} random characters)")
        if problems:
            raise RuntimeError(
                "refusing to start in production: " + "; ".join(problems)
                + ". Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )


config_by_name = {"development": Development, "testing": Testing, "production": Production}


def get_config(name=None):
    """Pick the configuration class for ``name`` or ``APP_ENV`` (development by default)."""
    name = name or os.environ.get("APP_ENV", "development")
    try:
        return config_by_name[name]
    except KeyError:
        raise RuntimeError(f"unknown APP_ENV {name!r}; use one of {sorted(config_by_name)}") from None
