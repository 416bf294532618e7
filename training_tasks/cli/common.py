"""What every `trainctl` command shares: the service it talks to, JSON in and out, and how a
failure is told: one line on stderr naming the problem and what to do, and the exit status.

Exit status: 0 done; 1 the service refused or could not do it (a bad config, an unknown
organization, a run that failed, the database or Redis not answering); 2 the command line, an
input file or an environment variable is wrong; 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from training_tasks.config.json_input import load_object
from training_tasks.config.settings import Settings
from training_tasks.errors import ConfigError, OrgNotRegistered, SettingsError, TrainingServiceError
from training_tasks.fields import SHOWN_CHARS, shown
from training_tasks.redaction import mask_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ABORTED = 0, 1, 2, 130
MAX_CONFIG_FILE_BYTES = 1 << 20  # a config names columns and settings; 1 MiB is far more
MAX_LINE_CHARS = 1500  # an error line longer than this is cut in its middle, keeping the fix
log = logging.getLogger("trainctl")


class InputFileError(click.ClickException):
    """A file given on the command line cannot be read as what the command needs."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        """Print the one-line error on stderr."""
        say(self.format_message())


def _service() -> Any:
    """The Python API on the settings of the environment (saying so if the database is default)."""
    from training_tasks.runtime import build_runtime
    from training_tasks.service.api import TrainingService  # Celery, SQLAlchemy: not for --help

    return TrainingService(build_runtime(cli_settings()))


def cli_settings() -> Settings:
    """The settings from the environment; on the default database, one line on stderr says so.

    The default is a SQLite file under ML_BASE_PATH (./ml unless set), so it depends on the folder
    a command runs in: the line tells which file, and how to use another database.
    """
    settings = Settings.from_env()
    if settings.database_is_default:
        click.echo(
            f"using the default database {settings.database_url} (set DATABASE_URL to use another)",
            err=True,
        )
    return settings


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def read_json_object(path: Path, what: str, option: str = "--config") -> dict[str, Any]:
    """The JSON object in the file at `path`; InputFileError says what is wrong with it."""
    where = f"{option} {_path_text(path)}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputFileError(
            f"{where}: no such file; give the path of a JSON file with {what}"
        ) from None
    except OSError as exc:
        raise InputFileError(f"{where}: cannot be read ({exc.strerror}); check the path") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(
            f"{where} is not a regular file (a directory, pipe or device); give the path of a "
            f"JSON file with {what}"
        )
    if info.st_size > MAX_CONFIG_FILE_BYTES:
        raise InputFileError(
            f"{where} is {info.st_size:,} bytes; {what} is at most {MAX_CONFIG_FILE_BYTES:,} "
            "bytes of JSON. Check that it is the right file"
        )
    try:
        text = path.read_bytes()[: MAX_CONFIG_FILE_BYTES + 1].decode("utf-8-sig")
    except OSError as exc:
        raise InputFileError(f"{where}: cannot be read ({exc.strerror}); check it") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(
            f"{where} is not UTF-8 text (byte {exc.start:,} is not); save it as UTF-8 JSON"
        ) from None
    try:
        return load_object(text, what)
    except ConfigError as exc:
        problem = exc.problem if exc.field == "config" else str(exc)
        raise InputFileError(f"{where}: {problem}") from None


def run_cli(command: click.Command, args: Sequence[str] | None = None) -> int:
    """Run `command` and return its exit status; an expected failure prints one line."""
    try:
        result = command.main(args=args, prog_name="trainctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        say("aborted")
        return EXIT_ABORTED
    except InputFileError as exc:
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:
        say(_usage_line(exc))
        return exc.exit_code
    except SettingsError as exc:
        return _failed(f"environment variable {exc}", EXIT_USAGE)
    except OrgNotRegistered as exc:
        return _failed(_in_database(str(exc)), EXIT_FAILED)
    except TrainingServiceError as exc:
        return _failed(str(exc), EXIT_FAILED)
    except TimeoutError as exc:  # `--wait --timeout`: the run goes on
        return _failed(str(exc), EXIT_FAILED)
    except Exception as exc:
        message = unavailable(exc)
        if message is None:
            raise
        return _failed(message, EXIT_FAILED)
    return result if isinstance(result, int) else EXIT_OK


def unavailable(exc: BaseException) -> str | None:
    """What to say when the database, Redis or a file cannot be used; None for anything else."""
    import redis

    # SQLAlchemy and kombu: only on this error path.
    from training_tasks.db.bootstrap import is_missing_database
    from training_tasks.db.errors import DATABASE_UNREACHABLE, is_migration_error
    from training_tasks.messaging.broker import BrokerUnavailable

    if is_missing_database(exc):
        return (
            f"the service database {_setting('database_url')} does not exist; create it with "
            "`trainctl db upgrade` (or point DATABASE_URL at the right one), then run the command "
            "again"
        )
    if isinstance(exc, DATABASE_UNREACHABLE):
        return _database_line(f"cannot be reached: {_first_line(exc.orig or exc)}")
    if is_migration_error(exc):  # Alembic: a schema this version does not know
        return _database_line(f"cannot be migrated: {_first_line(exc)}")
    if isinstance(exc, BrokerUnavailable) and _broker_of_its_own():
        return (
            f"the broker at {_setting('broker_url')} did not answer: {_first_line(exc)}. Start "
            "it or point BROKER_URL at it, then run the command again"
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | BrokerUnavailable):
        return (
            f"Redis at {_setting('redis_url')} did not answer: {_first_line(exc)}. Start Redis "
            "or point REDIS_URL at it, then run the command again"
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return (
            f"{_path_text(Path(str(exc.filename)))}: {exc.strerror or exc}; check that the path "
            "exists and that this user may use it (see ML_BASE_PATH)"
        )
    return None


def say(text: str) -> None:
    """Print `text` on stderr as one `error:` line."""
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if len(line) > MAX_LINE_CHARS:
        keep = MAX_LINE_CHARS // 2
        line = f"{line[:keep]} … ({len(line):,} characters in all) … {line[-keep:]}"
    click.echo(f"error: {line}", err=True)


def _failed(message: str, code: int) -> int:
    log.debug("the command failed", exc_info=True)  # the traceback, with --verbose
    say(message)
    return code


def _usage_line(exc: click.ClickException) -> str:
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"{exc.format_message()}{hint}"


def _database_line(problem: str) -> str:
    return (
        f"the service database {_setting('database_url')} {problem}. Check that "
        "its server runs and that DATABASE_URL names it (postgresql+psycopg://user@host:5432/db "
        "or sqlite:///path), then run the command again"
    )


def _in_database(message: str) -> str:
    """An unknown organization's message, naming the database it was looked for in."""
    where = f" is not registered in the service database {_setting('database_url')};"
    if " is not registered;" not in message:
        return message
    return message.replace(" is not registered;", where, 1)


def _broker_of_its_own() -> bool:
    """Whether BROKER_URL is set (the messages go elsewhere than REDIS_URL)."""
    import os

    return bool(os.environ.get("BROKER_URL"))


def _setting(name: str) -> str:
    """A connection URL of the settings with its password masked (the variable if unreadable)."""
    try:
        settings = Settings.from_env()
    except TrainingServiceError:
        return name.upper()
    url = mask_url(str(getattr(settings, name)))
    if name == "database_url" and settings.database_is_default:
        return f"{url} (the default; DATABASE_URL is not set)"
    return f"{url} ({name.upper()})"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    first, most = lines[0].strip(), 2 * SHOWN_CHARS
    return first if len(first) <= most else f"{first[:most]}… ({len(first):,} characters)"


def _path_text(path: Path) -> str:
    text = str(path)
    return text if len(text) <= SHOWN_CHARS else shown(text)
