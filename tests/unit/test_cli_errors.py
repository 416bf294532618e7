"""Every expected failure of `trainctl` is a short message naming the problem, never a traceback.

Each case runs the real `trainctl` in a subprocess against a service database under tmp_path that
holds one organization, acme-corp.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_cli import BASE_ORG, _registered

UNKNOWN_VERSION = "v2026-01-15T10-30-00-000Z_a1b2c3d4"
NO_SERVER = "127.0.0.1:1"  # nothing listens on port 1
DEFAULT_NOTE = "using the default database sqlite:///"
MAX_LINES, MAX_LINE_CHARS = 3, 600


def trainctl(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real `trainctl` with ML_BASE_PATH=home/ml and no DATABASE_URL or REDIS_URL."""
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    environ.update({"ML_BASE_PATH": str(home / "ml"), **env})
    return subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=home,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ml/training.db holds acme-corp, and input files that are wrong."""
    home = tmp_path_factory.mktemp("trainctl")
    _registered(home, doc=BASE_ORG).dispose()  # its SCADA URL is not set: never reached
    (home / "list.json").write_text(json.dumps([BASE_ORG]))
    (home / "broken.json").write_text('{"hyperparameters": {')
    (home / "latin1.json").write_bytes(b'{"targetColumn": "\xe9t\xe9"}')
    (home / "stray.onnx").write_bytes(b"not a model")
    (home / "a-file").write_text("not a folder")
    return home


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def expect_failure(result: subprocess.CompletedProcess[str], code: int, *words: str) -> list[str]:
    """The failure's stderr lines, after checking it is short, names `words` and exits `code`."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln and not ln.startswith(DEFAULT_NOTE)]
    assert 1 <= len(lines) <= MAX_LINES, result.stderr
    assert all(len(line) <= MAX_LINE_CHARS for line in lines), result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    return lines


# (command line, extra environment, exit status, words the message must hold)
CASES: list[tuple[list[str], dict[str, str], int, list[str]]] = [
    # What the user asked for does not exist.
    (["history", "globex"], {}, 1, ["organization globex is not registered", "training.db"]),
    (["status", "globex", "--json"], {}, 1, ["trainctl org create globex"]),
    (["versions", "globex"], {}, 1, ["not registered"]),
    (["audit", "globex"], {}, 1, ["not registered"]),
    (["cancel", "globex"], {}, 1, ["not registered"]),
    (["schedule", "globex", "0 2 * * *"], {}, 1, ["not registered"]),
    (["deploy", "acme-corp", UNKNOWN_VERSION], {}, 1, ["trainctl versions acme-corp"]),
    (["rollback", "acme-corp", UNKNOWN_VERSION], {}, 1, ["is not a version of organization"]),
    (["deploy", "acme-corp", "latest"], {}, 1, ["version"]),
    (["rollback", "acme-corp"], {}, 1, ["acme-corp has no previous version"]),
    (["cancel", "acme-corp", "--wait", "0"], {}, 1, ["no queued or running run"]),
    (["schedule", "acme-corp", "--delete"], {}, 1, ["has no training schedule"]),
    (["validate", "acme-corp", "{home}/stray.onnx"], {}, 1, ["outside the folders"]),
    (["history", "../etc"], {}, 1, ["not a valid organization id"]),
    # Input files.
    (["org", "create", "globex", "--config", "{home}/nowhere.json"], {}, 2, ["no such file"]),
    (["org", "update", "acme-corp", "--config", "{home}/list.json"], {}, 2, ["got a list"]),
    (["train", "acme-corp", "--config", "{home}/broken.json"], {}, 2, ["is not valid JSON"]),
    (["train", "acme-corp", "--config", "{home}/latin1.json"], {}, 2, ["is not UTF-8"]),
    (["train", "acme-corp", "--config", "{home}"], {}, 2, ["is not a regular file"]),
    # Environment variables.
    (["org", "list"], {"DATABASE_URL": "postgresql://u@h:port/db"}, 2, ["DATABASE_URL"]),
    (["org", "list"], {"DATABASE_URL": "mysql://u@h/db"}, 2, ["DATABASE_URL", "postgresql"]),
    (["org", "list"], {"DATABASE_URL": "postgresql+nodriver://u@h/db"}, 2, ["not supported"]),
    (["org", "list"], {"DATABASE_URL": "postgresql://u:pw@h:5432/"}, 2, ["names no database"]),
    (["org", "list"], {"DATABASE_URL": "not a url"}, 2, ["DATABASE_URL"]),
    (["reconcile"], {"REDIS_URL": "redis://127.0.0.1:port/0"}, 2, ["REDIS_URL", "port"]),
    (["reconcile"], {"REDIS_URL": "redis://127.0.0.1:6379/zero"}, 2, ["database number"]),
    (["reconcile"], {"REDIS_URL": "http://127.0.0.1:6379"}, 2, ["REDIS_URL", "scheme"]),
    (["org", "list"], {"ML_BASE_PATH": "{home}/a-file"}, 2, ["ML_BASE_PATH"]),
    (["org", "list"], {"PYTHON_ENV": "{home}/nowhere"}, 2, ["PYTHON_ENV"]),
    (["org", "list"], {"ML_MASTER_KEYS": "nonsense"}, 2, ["ML_MASTER_KEYS"]),
    (["org", "list"], {"TRAINING_TIMEOUT_S": "soon"}, 2, ["TRAINING_TIMEOUT_S"]),
    (["org", "list"], {"NODE_ENV": "staging"}, 2, ["NODE_ENV"]),
    # Services that do not answer.
    (
        ["status", "acme-corp"],
        {"DATABASE_URL": f"postgresql+psycopg://postgres@{NO_SERVER}/x"},
        1,
        ["cannot be reached", "DATABASE_URL"],
    ),
    (
        ["train", "acme-corp"],
        {"REDIS_URL": f"redis://{NO_SERVER}/0"},
        1,
        ["REDIS_URL"],
    ),
    # Cron patterns and time zones.
    (["schedule", "acme-corp", "61 2 * * *"], {}, 1, ["trainingSchedule.pattern", "minute"]),
    (["schedule", "acme-corp", "0 0 31 2 *"], {}, 1, ["never"]),
    (["schedule", "acme-corp", "every day"], {}, 1, ["trainingSchedule.pattern"]),
    (["schedule", "acme-corp", "0 2 * * *", "-z", "Moon/Base"], {}, 1, ["timezone"]),
    (["schedule", "acme-corp", "--disable"], {}, 1, ["trainingSchedule.pattern"]),
    # Option values and the command line.
    (["history", "acme-corp", "--limit", "0"], {}, 2, ["--limit"]),
    (["audit", "acme-corp", "--limit", "-1"], {}, 2, ["--limit"]),
    (["train", "acme-corp", "--wait", "--timeout", "-5"], {}, 2, ["--timeout"]),
    (["cancel", "acme-corp", "--wait", "-1"], {}, 2, ["--wait"]),
    (["gc", "--keep", "many"], {}, 2, ["--keep"]),
    (["schedule", "acme-corp", "--preview", "0"], {}, 2, ["--preview"]),
    (["schedule", "acme-corp", "--slots", "-1"], {}, 2, ["--slots"]),
    (["schedule", "acme-corp", "--delete", "--disable"], {}, 2, ["--delete"]),
    (["serve", "--port", "99999"], {}, 2, ["--port"]),
    (["serve", "--fallback", "cache"], {}, 2, ["--fallback"]),
    (["metrics", "--port", "-1"], {}, 2, ["--port"]),
    (["secrets", "new-key", "--id", "no spaces allowed"], {}, 2, ["--id"]),
    (["history"], {}, 2, ["ORG_ID"]),
    (["histroy", "acme-corp"], {}, 2, ["histroy"]),
    (["db", "downgrade"], {}, 2, ["downgrade"]),
]


@pytest.mark.parametrize(
    ("args", "env", "code", "words"), CASES, ids=[" ".join(c[0])[:60] for c in CASES]
)
def test_an_expected_failure_is_a_short_message_and_an_exit_status(
    home: Path, args: list[str], env: dict[str, str], code: int, words: list[str]
) -> None:
    filled = [arg.replace("{home}", str(home)) for arg in args]
    environ = {name: value.replace("{home}", str(home)) for name, value in env.items()}
    expect_failure(trainctl(home, *filled, **environ), code, *words)


def test_a_port_in_use_is_named_with_what_to_do(home: Path, busy_port: int) -> None:
    result = trainctl(home, "metrics", "--port", str(busy_port))
    expect_failure(result, 2, f"cannot listen on 127.0.0.1:{busy_port}", "choose another --port")


def test_serve_with_no_organization_registered_says_how_to_register_one(tmp_path: Path) -> None:
    result = trainctl(tmp_path, "serve")
    expect_failure(result, 2, "no organization is registered", "trainctl org create")


def test_an_unknown_organization_names_the_database_it_was_looked_for_in(home: Path) -> None:
    database = home / "ml" / "training.db"
    [line] = expect_failure(trainctl(home, "org", "show", "globex"), 1)
    assert f"not registered in the service database sqlite:///{database}" in line
    assert "DATABASE_URL is not set" in line
    elsewhere = f"sqlite:///{home / 'other.db'}"
    [line] = expect_failure(trainctl(home, "org", "show", "globex", DATABASE_URL=elsewhere), 1)
    assert f"not registered in the service database {elsewhere} (DATABASE_URL)" in line


def test_a_password_in_a_bad_url_is_never_echoed(home: Path) -> None:
    bad = "redis://:hunter2@127.0.0.1:port/0"
    result = trainctl(home, "reconcile", REDIS_URL=bad)
    expect_failure(result, 2, "REDIS_URL")
    assert "hunter2" not in result.stderr
    result = trainctl(home, "org", "list", DATABASE_URL="postgresql://u:hunter2@h:5432")
    expect_failure(result, 2, "names no database")
    assert "hunter2" not in result.stderr
