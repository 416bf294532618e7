"""The service's own settings: one frozen object built from the environment and checked there."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from training_tasks.config.sql_url import driver_name
from training_tasks.errors import SettingsError
from training_tasks.fields import shown
from training_tasks.protocol.object_store import check_store_url
from training_tasks.redaction import mask_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_TRAINING_TIMEOUT_S = 7200.0
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+socket")
# BROKER_URL: RabbitMQ when a deployment outgrows Redis as its broker, or a Redis of its own.
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")
AMQP_SCHEMES = ("amqp", "amqps")
# The service database's drivers this project installs (psycopg 3, the standard sqlite3 module).
DATABASE_DRIVERS = ("postgresql", "postgresql+psycopg", "sqlite", "sqlite+pysqlite")
NODE_ENVS = ("development", "production", "test")
# After beat was down: run the latest missed slot once (the others are recorded as skipped), or
# skip every slot that is later than SCHEDULE_GRACE_S.
MISSED_SLOT_POLICIES = ("latest", "skip")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PROJECT_ROOT = PACKAGE_ROOT.parent
# The bundled training script: tracked at ml/scripts/ in the source tree (and run from there by an
# editable install); a wheel carries it inside the package (pyproject.toml maps it there).
SOURCE_SCRIPT = PROJECT_ROOT / "ml" / "scripts" / "train_model.py"
INSTALLED_SCRIPT = PACKAGE_ROOT / "scripts" / "train_model.py"
BUNDLED_SCRIPT = INSTALLED_SCRIPT if INSTALLED_SCRIPT.is_file() else SOURCE_SCRIPT
# What a number read from the environment counts, told by the variable's suffix (names carry
# units); a variable without one of these suffixes holds a plain number.
UNIT_SUFFIXES = {"_S": "seconds", "_MB": "megabytes (MB)"}


@dataclass(frozen=True)
class Settings:
    """Where the service keeps its files and how it reaches Redis and its database."""

    ml_base_path: Path
    python_env: str
    debug: bool
    redis_url: str
    database_url: str
    training_timeout_s: float
    lease_ttl_s: float
    org_queue_poll_s: float
    beat_lock_ttl_s: float = 30.0
    schedule_missed_slots: str = "latest"
    schedule_grace_s: float = 300.0
    alert_webhook_url: str | None = None
    alert_webhook_timeout_s: float = 5.0
    reaper_interval_s: float = 15.0
    # How long an active run may wait for its next stage's message, with none in its queue,
    # before the reaper takes the message as lost and sends the stage again.
    run_stall_s: float = 300.0
    retry_backoff_s: float = 5.0
    min_free_disk_mb: float = 1024.0
    # TRAINING_FORK_SERVER: the bundled script forks from a fork server that imported its
    # libraries once (see training_tasks.sandbox.zygote) instead of a fresh interpreter per run.
    training_fork_server: bool = True
    # ML_MASTER_KEYS as given (checked by parsing); never shown, see training_tasks.protocol.keyring.
    master_keys: str | None = field(default=None, repr=False)
    # DATABASE_URL was unset: the SQLite file under ML_BASE_PATH, which depends on the folder a
    # command runs in, so the CLI says which file it uses.
    database_is_default: bool = False
    # MODEL_STORE_URL when it names an object store (s3://bucket/prefix); None: ML_BASE_PATH is
    # the only copy of models and artifacts (see training_tasks.protocol.object_store).
    model_store_url: str | None = None
    # Where Celery's messages go: BROKER_URL (RabbitMQ, or a Redis of its own); REDIS_URL when it
    # is unset. Results, the hot-swap channel and every key stay in REDIS_URL either way.
    broker_url: str = ""

    def __post_init__(self) -> None:
        if not self.broker_url:  # settings built without one: the messages go through REDIS_URL
            object.__setattr__(self, "broker_url", self.redis_url)

    @property
    def models_path(self) -> Path:
        return self.ml_base_path / "models"

    @property
    def artifacts_path(self) -> Path:
        return self.ml_base_path / "artifacts"

    @property
    def scripts_path(self) -> Path:
        return self.ml_base_path / "scripts"

    @property
    def default_script(self) -> Path:
        """The bundled training script; `<ML_BASE_PATH>/scripts/train_model.py` if an install lacks it."""
        if BUNDLED_SCRIPT.is_file():
            return BUNDLED_SCRIPT
        return self.scripts_path / "train_model.py"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build and check the settings; a bad variable raises SettingsError naming it."""
        env = os.environ if environ is None else environ
        base = Path(env.get("ML_BASE_PATH") or "./ml").expanduser().resolve()
        if base.exists() and not base.is_dir():
            raise SettingsError("ML_BASE_PATH", f"{base} exists and is not a directory")
        node_env = env.get("NODE_ENV", "production") or "production"
        if node_env not in NODE_ENVS:
            raise SettingsError("NODE_ENV", f"{node_env!r} is not one of {', '.join(NODE_ENVS)}")
        return cls(
            ml_base_path=base,
            python_env=_python_env(env.get("PYTHON_ENV")),
            debug=node_env == "development",
            redis_url=read_redis_url(env),
            broker_url=read_broker_url(env),
            database_url=_database_url(env.get("DATABASE_URL"), base),
            training_timeout_s=read_positive(env, "TRAINING_TIMEOUT_S", DEFAULT_TRAINING_TIMEOUT_S),
            lease_ttl_s=read_positive(env, "RUN_LEASE_TTL_S", 60.0),
            org_queue_poll_s=read_positive(env, "ORG_QUEUE_POLL_S", 2.0),
            beat_lock_ttl_s=read_positive(env, "BEAT_LOCK_TTL_S", 30.0),
            schedule_missed_slots=_choice(env, "SCHEDULE_MISSED_SLOTS", MISSED_SLOT_POLICIES),
            schedule_grace_s=read_positive(env, "SCHEDULE_GRACE_S", 300.0),
            alert_webhook_url=_http_url(env, "ALERT_WEBHOOK_URL"),
            alert_webhook_timeout_s=read_positive(env, "ALERT_WEBHOOK_TIMEOUT_S", 5.0),
            reaper_interval_s=read_positive(env, "REAPER_INTERVAL_S", 15.0),
            run_stall_s=read_positive(env, "RUN_STALL_S", 300.0),
            retry_backoff_s=read_positive(env, "RETRY_BACKOFF_S", 5.0),
            min_free_disk_mb=read_positive(env, "MIN_FREE_DISK_MB", 1024.0),
            training_fork_server=read_fork_server(env),
            master_keys=_master_keys(env),
            database_is_default=not env.get("DATABASE_URL"),
            model_store_url=check_store_url(env.get("MODEL_STORE_URL"), base),
        )


def _python_env(value: str | None) -> str:
    if not value:
        return sys.executable
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "bin" / "python"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SettingsError(
            "PYTHON_ENV",
            f"{value!r} is not an executable Python interpreter or a virtualenv folder; "
            "point it at the interpreter that runs training scripts, or unset it to use this one",
        )
    return str(path)


def read_redis_url(env: Mapping[str, str]) -> str:
    """REDIS_URL (results, pub/sub, keys; the broker unless BROKER_URL is set), checked; the local
    default when it is unset."""
    value = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    parsed = urlparse(value)
    if parsed.scheme not in REDIS_SCHEMES:
        raise SettingsError(
            "REDIS_URL",
            f"scheme {parsed.scheme!r} is not supported; use one of {', '.join(REDIS_SCHEMES)} "
            "(for example redis://127.0.0.1:6379/0)",
        )
    _check_port_and_database("REDIS_URL", value, "redis://127.0.0.1:6379/0")
    return value


def read_broker_url(env: Mapping[str, str]) -> str:
    """BROKER_URL (where Celery's messages go), checked; REDIS_URL's value when it is unset."""
    value = env.get("BROKER_URL")
    if not value:
        return read_redis_url(env)
    scheme = urlparse(value).scheme
    if scheme not in BROKER_SCHEMES:
        # Only the scheme is echoed: a value without `://` would show its password unmasked.
        raise SettingsError(
            "BROKER_URL",
            f"scheme {shown(scheme)} is not supported; use one of "
            f"{', '.join(f'{s}://' for s in BROKER_SCHEMES)} (for example "
            "amqp://user:password@rabbitmq:5672/training), or unset it to send messages "
            "through REDIS_URL",
        )
    example = "amqp://user:password@rabbitmq:5672/training"
    if scheme not in AMQP_SCHEMES:
        example = "redis://127.0.0.1:6379/0"
    _check_port_and_database("BROKER_URL", value, example)
    return value


def is_amqp_url(url: str) -> bool:
    """Whether a broker URL names RabbitMQ (amqp:// or amqps://) rather than Redis."""
    return urlparse(url).scheme in AMQP_SCHEMES


def _check_port_and_database(name: str, value: str, example: str) -> None:
    """Refuse a port that is not a number, and a Redis database that is not a whole number."""
    parsed = urlparse(value)
    try:
        parsed.port  # noqa: B018 - urllib checks the port only when it is read
    except ValueError:
        raise SettingsError(
            name,
            f"the port of {shown(mask_url(value))} is not a number from 0 to 65535 "
            f"(for example {example})",
        ) from None
    database = parsed.path.strip("/")
    if parsed.scheme in ("redis", "rediss") and database and not database.isdigit():
        raise SettingsError(
            name,
            f"the database number {shown(database)} is not a whole number (for example {example})",
        )


def _database_url(value: str | None, base: Path) -> str:
    if not value:
        return f"sqlite:///{base / 'training.db'}"
    try:
        driver = driver_name(value)
    except ValueError as exc:
        raise SettingsError("DATABASE_URL", str(exc)) from None
    if driver not in DATABASE_DRIVERS:
        raise SettingsError(
            "DATABASE_URL",
            f"{driver!r} is not supported; use postgresql+psycopg://user:password@host:5432/db "
            "or sqlite:///path",
        )
    if driver.startswith("postgresql") and not database_name(value):
        raise SettingsError(
            "DATABASE_URL",
            f"{mask_url(value)} names no database; add its name, as in "
            "postgresql+psycopg://user@host:5432/training",
        )
    if driver == "postgresql":
        value = "postgresql+psycopg" + value[len(driver) :]
    return value


def database_name(url: str) -> str:
    """The database part of a SQLAlchemy URL (`db` of `...@host:5432/db?opts`); '' if none."""
    rest = url.partition("://")[2].partition("?")[0]
    # A password may hold '@' and '/': the host starts after the last '@'.
    return rest.rpartition("@")[2].partition("/")[2]


def _master_keys(env: Mapping[str, str]) -> str | None:
    raw = env.get("ML_MASTER_KEYS") or None
    if raw is not None:
        from training_tasks.protocol.keyring import parse_master_keys  # cryptography: only if set

        parse_master_keys(raw)  # a bad key fails start-up, naming the entry but not the key
    return raw


def _http_url(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name) or None
    if value is not None and urlparse(value).scheme not in ("http", "https"):
        raise SettingsError(name, f"{value!r} is not an http:// or https:// URL")
    return value


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name) or allowed[0]
    if value not in allowed:
        raise SettingsError(name, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def read_fork_server(env: Mapping[str, str]) -> bool:
    """TRAINING_FORK_SERVER: on (1, the default where Linux allows it) forks each run of the
    bundled training script from a fork server per worker process that imported its libraries
    once, about 1 s less per run and ~110 MB resident per server; 0 starts a fresh interpreter
    per run, as for an organization's own script. The sandbox is the same either way."""
    raw = (env.get("TRAINING_FORK_SERVER") or "1").strip().lower()
    if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise SettingsError("TRAINING_FORK_SERVER", f"{raw!r} is not 1 (on) or 0 (off)")
    return raw in ("1", "true", "yes", "on")


def read_positive(env: Mapping[str, str], name: str, default: float) -> float:
    """The number in variable `name`, checked to be greater than 0; `default` if unset or empty."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan  # refused below, as "nan" and "inf" are
    if not math.isfinite(value):
        raise SettingsError(name, f"{raw!r} is not {_a_number_of(name)}")
    if value <= 0:
        raise SettingsError(name, f"must be greater than 0, got {raw}")
    return value


def _a_number_of(name: str) -> str:
    units = [unit for suffix, unit in UNIT_SUFFIXES.items() if name.endswith(suffix)]
    return f"a number of {units[0]}" if units else "a number"
