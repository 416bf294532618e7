"""`trainctl` output for people (a 100-column terminal) and for pipes (plain lines, nothing cut).

The terminal is a real pseudo-terminal with COLUMNS=100 running the real `trainctl`; the pipe is
a subprocess whose stdout is captured.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from tests.unit.test_cli import BASE_ORG, _registered
from tests.unit.test_cli_errors import trainctl

WIDTH = 100
ORG = "acme-corp"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
LONG_ERROR = (
    "training of organization acme-corp version {version} failed: the training script exited "
    "with status 1 after 412.5 s. Its last lines: lightgbm.basic.LightGBMError: Check failed: "
    "(num_data) > (0) at /__w/LightGBM/src/io/dataset.cpp, line 39. Look at the run's train.log "
    "under ML_BASE_PATH/artifacts/acme-corp/{version}/ and fix the data range or the script"
)
FAILURES = [
    "recall 0.44 is below the threshold 0.70 (95% CI 0.39-0.50: 134 of 303)",
    "precision 0.52 is below the threshold 0.70 (95% CI 0.47-0.57: 210 of 404)",
    "the model is worse than the deployed version on the same holdout: F1 0.48 against 0.91",
]


def make_plant(home: Path) -> dict[str, Any]:
    """acme-corp with a deployed version, a rejected one and a failed run, and a schedule."""
    from tests.support.registry_fixtures import NOW, record_model
    from training_tasks.db.tables import model_versions, organizations, training_runs
    from training_tasks.protocol.ids import new_run_id, new_version_id
    from training_tasks.protocol.paths import ModelStore
    from training_tasks.registry import runs

    engine, store = _registered(home, ORG, {**BASE_ORG}), ModelStore(home / "ml")
    made: dict[str, Any] = {}
    for name, offset_s in (("failed", -7200), ("rejected", -3600), ("deployed", 0)):
        now = NOW + timedelta(seconds=offset_s)
        run_id, version = new_run_id(), new_version_id(now)
        runs.create_run(
            engine,
            run_id=run_id,
            org_id=ORG,
            version=version,
            config={"hyperparameters": {"numLeaves": 31}, "featureColumns": ["temperature"]},
            trigger="cli",
            auto_deploy=True,
            actor="t",
            now=now,
        )
        row = run_values(name, version, now)
        with engine.begin() as conn:
            conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(**row))
        if name != "failed":
            report = {
                "passed": name == "deployed",
                "failures": [] if name == "deployed" else FAILURES,
            }
            report["metrics"] = {
                "accuracy": 0.968,
                "precision": 0.9,
                "recall": 0.858,
                "rocAuc": 0.97,
            }
            record_model(engine, store, ORG, version, run_id, now=now, report=report)
        made[name] = {"runId": run_id, "version": version, "error": row.get("error")}
    with engine.begin() as conn:
        deployed = made["deployed"]["version"]
        conn.execute(update(organizations).values(current_version=deployed, deploy_sequence=1))
        conn.execute(
            update(model_versions)
            .where(model_versions.c.version == deployed)
            .values(status="deployed")
        )
    engine.dispose()
    scheduled = trainctl(home, "schedule", ORG, "0 2 * * 0", "-z", "America/New_York")
    assert scheduled.returncode == 0, scheduled.stderr
    return made


def run_values(name: str, version: str, now: Any) -> dict[str, Any]:
    """The columns a finished run of each kind has, as the pipeline writes them."""
    values: dict[str, Any] = {
        "started_at": now + timedelta(seconds=2),
        "finished_at": now + timedelta(seconds=95),
        "data_stats": {
            "rows_train": 36864,
            "rows_holdout": 9216,
            "data_hash": "ab" * 32,
            "holdout_path": f"/ml/data/{ORG}/{version}/holdout.parquet",
        },
        "metrics": {
            "accuracy": 0.968,
            "recall": 0.858,
            "rocAuc": 0.976,
            "script": {
                "decision_threshold": 0.5,
                "num_iterations": 100,
                "decision_policy": {"type": "fixed"},
            },
            "training": {"elapsedS": 2.5, "cpuS": 1.3, "peakRssMb": 351.1},
        },
        "stage_timings": {"extract": {"seconds": 0.1, "startedAt": "2026-01-01T00:00:00Z"}},
    }
    if name == "deployed":
        return {**values, "status": "succeeded", "stage": "deploy"}
    if name == "rejected":
        error = f"organization {ORG}: model version {version} was rejected: " + "; ".join(FAILURES)
        return {**values, "status": "rejected", "stage": "validate", "error": error}
    attempt = {
        "attempt": 1,
        "stage": "train",
        "kind": "failed",
        "error": "exit 1",
        "worker": "w1@host",
        "at": "2026-01-01T00:00:00Z",
    }
    error = LONG_ERROR.format(version=version)
    return {
        **values,
        "status": "failed",
        "stage": "train",
        "error": error,
        "metrics": None,
        "attempts": [attempt],
        "error_trace": "Traceback (most recent call last): ...",
    }


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    home = tmp_path_factory.mktemp("plant")
    return home, make_plant(home)


def on_terminal(home: Path, *args: str, columns: int = WIDTH) -> list[str]:
    """What `trainctl ARGS` shows on a terminal COLUMNS wide, without colours, as lines."""
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    environ.update(
        ML_BASE_PATH=str(home / "ml"),
        COLUMNS=str(columns),
        LINES="50",
        TERM="xterm-256color",
        REDIS_URL="redis://127.0.0.1:1/0",
    )
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE"):
        environ.pop(name, None)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "training_tasks.cli", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        env=environ,
        cwd=home,
    )
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closes when the command exits
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
        proc.kill() if proc.poll() is None else None
        proc.wait(timeout=10)
    assert proc.returncode == 0
    text = ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")
    return text.splitlines()


def short(version: str) -> str:
    """The short id a table shows: to the second, then the random suffix."""
    return f"{version[:20]}…{version[-8:]}"


def section(lines: list[str], title: str, end: str) -> list[str]:
    """The lines from the one that is `title` up to the first that starts with `end`."""
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    stop = next(i for i, line in enumerate(lines) if i > start and line.startswith(end))
    return lines[start + 1 : stop]


def test_history_fits_100_columns_with_short_version_ids_on_one_line(plant: Any) -> None:
    home, made = plant
    lines = on_terminal(home, "history", ORG)
    shown = "\n".join(lines)
    assert max(map(len, lines)) <= WIDTH, shown
    rows = section(lines, f"Training log of {ORG}, newest first (times in UTC)", "Errors")
    for run in made.values():  # each run's row starts with its whole short id
        assert sum(line.startswith(short(run["version"])) for line in rows) == 1, shown
    assert "1m33s" in shown and "(train)" in shown and "(validate)" in shown
    assert "version ids are shortened here" in shown


def test_long_errors_wrap_at_words_and_end_with_an_ellipsis(plant: Any) -> None:
    home, made = plant
    lines = on_terminal(home, "history", ORG)
    notes = section(lines, "Errors", "version ids are shortened")
    words = {word for run in made.values() for word in (run["error"] or "").split()}
    words |= {short(run["version"]) for run in made.values()} | {"version", "errors"}
    for line in notes:
        for word in line.split():
            if set(word) != {"─"}:
                assert word in words or word.endswith("…"), (word, "\n".join(notes))
    assert any(line.rstrip().endswith("…") for line in notes)  # the long error was cut
    # Both errors are there, each from its first word.
    assert sum("training of organization acme-corp" in line for line in notes) == 1


def test_versions_fit_100_columns_and_list_why_one_was_rejected(plant: Any) -> None:
    home, made = plant
    lines = on_terminal(home, "versions", ORG)
    shown = "\n".join(lines)
    assert max(map(len, lines)) <= WIDTH, shown
    deployed = short(made["deployed"]["version"])
    assert any(line.startswith("*") and deployed in line for line in lines), shown
    assert "Why rejected" in shown and "recall 0.44 is below the threshold" in shown


def test_schedules_and_status_fit_100_columns(plant: Any) -> None:
    home, _ = plant
    for command in (
        ["schedules"],
        ["schedule", ORG],
        ["schedule", ORG, "--preview", "5"],
        ["status", ORG],
    ):
        lines = on_terminal(home, *command)
        assert lines and max(map(len, lines)) <= WIDTH, "\n".join(lines)


def test_a_narrow_terminal_cuts_a_version_id_only_with_an_ellipsis(plant: Any) -> None:
    home, made = plant
    lines = on_terminal(home, "history", ORG, columns=60)
    assert max(map(len, lines)) <= 60, "\n".join(lines)
    ids = {short(run["version"]) for run in made.values()}
    for word in (w for line in lines for w in line.split() if w.startswith("v20")):
        assert word in ids or word.endswith("…"), "\n".join(lines)


def test_piped_history_is_one_tab_separated_line_per_run_with_full_values(plant: Any) -> None:
    home, made = plant
    result = trainctl(home, "history", ORG)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    fields = header.split("\t")
    assert fields[:3] == ["version", "runId", "status"] and "error" in fields
    assert len(rows) == 3 and all(len(row.split("\t")) == len(fields) for row in rows)
    records = [dict(zip(fields, row.split("\t"), strict=True)) for row in rows]
    by_version = {r["version"]: r for r in records}
    failed = made["failed"]
    assert by_version[failed["version"]]["error"] == failed["error"]  # whole, on one line
    assert by_version[failed["version"]]["stage"] == "train"
    assert "…" not in result.stdout


def test_piped_versions_and_schedules_are_plain_records(plant: Any) -> None:
    home, made = plant
    versions = trainctl(home, "versions", ORG).stdout.splitlines()
    header = versions[0].split("\t")
    rejected = next(
        dict(zip(header, line.split("\t"), strict=True))
        for line in versions[1:]
        if line.startswith(made["rejected"]["version"])
    )
    assert rejected["validationFailures"] == "; ".join(FAILURES)
    assert rejected["deployed"] == "false"
    schedules = trainctl(home, "schedules", REDIS_URL="redis://127.0.0.1:1/0")
    names, row = schedules.stdout.splitlines()
    assert names.split("\t")[:3] == ["organizationId", "pattern", "timezone"]
    assert row.split("\t")[:4] == [ORG, "0 2 * * 0", "America/New_York", "true"]
    assert "beat:" in schedules.stderr


def test_piped_status_is_key_value_lines_never_wrapped(plant: Any) -> None:
    home, made = plant
    result = trainctl(home, "status", ORG, REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert f"deployed version: {made['deployed']['version']} (sequence 1)" in lines
    assert "replicas: unknown: Redis did not answer" in lines


def test_the_default_database_is_named_on_stderr(plant: Any) -> None:
    home, _ = plant
    result = trainctl(home, "org", "list")
    assert result.stdout.split() == [ORG]
    database = home / "ml" / "training.db"
    assert result.stderr.strip() == (
        f"using the default database sqlite:///{database} (set DATABASE_URL to use another)"
    )
    elsewhere = trainctl(home, "org", "list", DATABASE_URL=f"sqlite:///{database}")
    assert elsewhere.stderr == "" and elsewhere.stdout.split() == [ORG]
