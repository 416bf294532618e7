"""`trainctl` as a user meets it: help that explains, errors that name what to fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BASE_ORG = {
    "mlModelConfig": {"featureColumns": ["temperature"], "targetColumn": "failure"},
    "scadaDbConfig": {"urlEnv": "ACME_SCADA_URL"},
    "schemaConfig": {"table": "sensor_readings", "timestampColumn": "ts"},
}


def trainctl(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    environ.update(ML_BASE_PATH=str(tmp_path / "ml"), **env)
    return subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_every_command_and_the_environment(tmp_path: Path) -> None:
    result = trainctl(tmp_path, "--help")
    assert result.returncode == 0
    for word in (
        "org",
        "train",
        "status",
        "history",
        "versions",
        "deploy",
        "DATABASE_URL",
        "REDIS_URL",
    ):
        assert word in result.stdout


def test_a_bad_environment_variable_is_named_and_exits_2(tmp_path: Path) -> None:
    result = trainctl(tmp_path, "status", "acme-corp", DATABASE_URL="mysql://u@h/db")
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr and "postgresql" in result.stderr


def test_an_unknown_organization_says_how_to_register_it(tmp_path: Path) -> None:
    result = trainctl(tmp_path, "history", "acme-corp")
    assert result.returncode == 1
    assert "trainctl org create acme-corp" in result.stderr


def test_a_bad_org_config_is_refused_naming_the_field_and_registers_nothing(tmp_path: Path) -> None:
    config = tmp_path / "org.json"
    config.write_text(json.dumps({**BASE_ORG, "trainingSchedule": {"pattern": "whenever"}}))
    result = trainctl(tmp_path, "org", "create", "acme-corp", "--config", str(config))
    assert result.returncode == 1
    assert "trainingSchedule.pattern" in result.stderr
    assert trainctl(tmp_path, "org", "list").stdout.strip() == ""


def test_an_org_is_registered_and_shown_without_its_secret(tmp_path: Path) -> None:
    config = tmp_path / "org.json"
    config.write_text(
        json.dumps({**BASE_ORG, "scadaDbConfig": {"url": "postgresql://u:hunter2@h/db"}})
    )
    created = trainctl(tmp_path, "org", "create", "acme-corp", "--config", str(config))
    assert created.returncode == 0, created.stderr
    shown = trainctl(tmp_path, "org", "show", "acme-corp")
    assert json.loads(shown.stdout)["scadaDbConfig"]["url"] == "postgresql://u:***@h/db"
    assert "hunter2" not in shown.stdout
    assert trainctl(tmp_path, "org", "list").stdout.split() == ["acme-corp"]


def test_an_invalid_organization_id_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "org.json"
    config.write_text(json.dumps(BASE_ORG))
    result = trainctl(tmp_path, "org", "create", "../x", "--config", str(config))
    assert result.returncode == 1
    assert "organizationId" in result.stderr
