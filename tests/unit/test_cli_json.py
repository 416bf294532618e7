"""Every JSON `trainctl` prints uses one key style, camelCase as on the wire, at every depth, and
the same name for the same thing (`deployedVersion` in `org show` and in `status`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
import pytest

from tests.unit.test_cli import BASE_ORG, _registered, _version
from tests.unit.test_cli_errors import trainctl
from tests.unit.test_cli_output import ORG, make_plant

CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
# Maps whose keys the user chose (configs, column and feature names) or that are keyed by ids.
USER_MAPS = {"config", "mlModelConfig", "hyperparameters", "columnMappings", "derivedFeatures"}
ID_MAPS = {"replicas"}
NO_REDIS = {"REDIS_URL": "redis://127.0.0.1:1/0"}


def keys_not_camel(doc: Any, path: str = "") -> list[str]:
    """The paths of keys that are not camelCase, outside user-supplied maps."""
    bad: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            where = f"{path}.{key}"
            if not CAMEL.match(key):
                bad.append(where)
            if key in USER_MAPS:
                continue
            if key in ID_MAPS and isinstance(value, dict):
                for entry in value.values():
                    bad += keys_not_camel(entry, f"{where}[id]")
                continue
            bad += keys_not_camel(value, where)
    elif isinstance(doc, list):
        for item in doc:
            bad += keys_not_camel(item, f"{path}[]")
    return bad


def json_of(home: Path, *args: str) -> Any:
    result = trainctl(home, *args, **NO_REDIS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("plant")
    make_plant(home)
    # A config that uses every user map, with keys that are column and feature names.
    doc = {
        **BASE_ORG,
        "mlModelConfig": {
            "featureColumns": ["temperature", "oil_pressure"],
            "targetColumn": "failure",
            "hyperparameters": {"numLeaves": 31},
            "derivedFeatures": {"pressure_per_degree": "oil_pressure / temperature"},
        },
        "schemaConfig": {
            "table": "sensor_readings",
            "timestampColumn": "ts",
            "columnMappings": {"oil_pressure": "oil_pressure_kpa"},
        },
    }
    config = home / "org.json"
    config.write_text(json.dumps(doc))
    assert trainctl(home, "org", "update", ORG, "--config", str(config)).returncode == 0
    return home


def json_outputs(home: Path) -> dict[str, Any]:
    """What each JSON-printing command prints for the plant."""
    audit = trainctl(home, "audit", ORG)
    assert audit.returncode == 0, audit.stderr
    return {
        "status": json_of(home, "status", ORG, "--json"),
        "history": json_of(home, "history", ORG, "--json"),
        "versions": json_of(home, "versions", ORG, "--json"),
        "org show": json_of(home, "org", "show", ORG),
        "audit": [json.loads(line) for line in audit.stdout.splitlines()],
        "schedule": json_of(home, "schedule", ORG, "--json"),
        "schedule set": json_of(home, "schedule", ORG, "0 3 * * 0", "--json"),
        "schedule preview": json_of(home, "schedule", ORG, "--preview", "3", "--json"),
        "schedules": json_of(home, "schedules", "--json"),
        "gc": json_of(home, "gc", ORG, "--keep", "0", "--dry-run", "--json"),
    }


def test_every_json_output_uses_camel_case_keys_at_every_depth(plant: Path) -> None:
    outputs = json_outputs(plant)
    bad = {name: keys_not_camel(doc) for name, doc in outputs.items()}
    assert {name: paths for name, paths in bad.items() if paths} == {}
    # Keys the user chose are kept as given.
    shown = outputs["org show"]
    assert "pressure_per_degree" in shown["mlModelConfig"]["derivedFeatures"]
    assert shown["schemaConfig"]["columnMappings"] == {"oil_pressure": "oil_pressure_kpa"}
    assert outputs["gc"] and outputs["audit"] and outputs["history"]


def test_the_run_summary_carries_the_data_stats_and_script_metrics_in_camel_case(
    plant: Path,
) -> None:
    run = json_of(plant, "history", ORG, "--json")[0]
    assert run["data"]["rowsTrain"] == 36864 and run["data"]["dataHash"] == "ab" * 32
    assert run["metrics"]["script"]["decisionThreshold"] == 0.5
    assert run["metrics"]["training"]["peakRssMb"] == 351.1
    assert run["config"]["hyperparameters"] == {"numLeaves": 31}
    failed = json_of(plant, "history", ORG, "--json")[-1]
    assert failed["attempts"][0]["kind"] == "failed" and failed["errorTrace"]


def test_the_deployed_version_has_one_name_everywhere(plant: Path) -> None:
    shown = json_of(plant, "org", "show", ORG)
    status = json_of(plant, "status", ORG, "--json")
    assert "currentVersion" not in shown
    assert shown["deployedVersion"] == status["deployedVersion"] is not None
    preview = json_of(plant, "schedule", ORG, "--preview", "1", "--json")[0]
    slotlike = {"scheduledFor", "scheduledLocal", "timezone", "note"}
    assert set(preview) == slotlike


def test_validate_json_is_camel_case(tmp_path: Path) -> None:
    from tests.support import onnx_fixtures as fx

    org = fx.ORG_ID
    doc = {
        **BASE_ORG,
        "mlModelConfig": {"featureColumns": fx.FEATURES, "targetColumn": fx.TARGET},
        "scadaDbConfig": {"url": "sqlite:///x.db"},
    }
    engine = _registered(tmp_path, org, doc)
    holdout = fx.write_holdout(tmp_path / "holdout.parquet", *fx.make_data(600, seed=2))
    wire = {
        "organizationId": org,
        "dataRange": {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-01T00:00:00Z"},
        "hyperparameters": {},
        "validationSplit": 0.2,
        "targetColumn": fx.TARGET,
        "featureColumns": fx.FEATURES,
    }
    version = _version(
        engine, tmp_path, org, 0, config=wire, data_stats={"holdout_path": str(holdout)}
    )
    engine.dispose()
    booster = fx.train_booster(*fx.make_data(600, seed=3))
    model = tmp_path / "ml" / "models" / org / f"model_{version}.onnx"
    model.write_bytes(fx.to_onnx(booster, org_id=org, version=version).SerializeToString())
    result = trainctl(tmp_path, "validate", org, str(model), "--json")
    assert result.returncode in (0, 1), result.stderr
    assert keys_not_camel(json.loads(result.stdout)) == []


def test_every_command_that_prints_json_is_covered() -> None:
    from training_tasks.cli.main import cli

    def with_json(group: click.Group, prefix: str) -> set[str]:
        found = set()
        for name, command in group.commands.items():
            path = f"{prefix}{name}"
            if isinstance(command, click.Group):
                found |= with_json(command, f"{path} ")
            elif any(param.name == "as_json" for param in command.params):
                found.add(path)
        return found

    covered_here = {"status", "history", "versions", "schedule", "schedules", "gc", "validate"}
    covered_with_a_broker = {"train"}  # tests/integration/test_cli_train_json.py
    assert with_json(cli, "") == covered_here | covered_with_a_broker
