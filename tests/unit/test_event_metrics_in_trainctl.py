"""`trainctl versions` shows the event metrics a version was validated with (failures caught of
all, median lead time, false alarms per asset-day) on a 100-column terminal, and piped output and
--json carry them in full; an organization without events sees the table it always saw."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_cli_errors import trainctl
from tests.unit.test_cli_output import ORG, WIDTH, make_plant, on_terminal, short

EVENTS = {
    "eventRecall": 11 / 12,
    "eventsCaught": 11,
    "eventsTotal": 12,
    "medianLeadTimeH": 5.5,
    "falseAlarmsPerAssetDay": 0.0421,
}


def add_window_version(home: Path) -> str:
    """A version of ORG validated with event metrics, newer than the plant's."""
    from tests.support.registry_fixtures import NOW, migrated_engine, record_model
    from training_tasks.protocol.ids import new_run_id, new_version_id
    from training_tasks.protocol.paths import ModelStore
    from training_tasks.registry import runs

    engine = migrated_engine(f"sqlite:///{home / 'ml' / 'training.db'}")
    store = ModelStore(home / "ml")
    now = NOW + timedelta(hours=1)
    run_id, version = new_run_id(), new_version_id(now)
    runs.create_run(
        engine,
        run_id=run_id,
        org_id=ORG,
        version=version,
        config={"featureColumns": ["vibration"], "windows": {"interval": "10min"}},
        trigger="cli",
        auto_deploy=False,
        actor="t",
        now=now,
    )
    metrics = {"accuracy": 0.97, "precision": 0.91, "recall": 0.86, "rocAuc": 0.98, **EVENTS}
    report = {"passed": True, "failures": [], "metrics": metrics}
    record_model(engine, store, ORG, version, run_id, now=now, report=report)
    engine.dispose()
    return version


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    home = tmp_path_factory.mktemp("plant")
    made = make_plant(home)
    return home, made, add_window_version(home)


def test_versions_show_caught_lead_time_and_false_alarms_within_100_columns(
    plant: tuple[Path, dict[str, Any], str],
) -> None:
    home, made, window_version = plant

    lines = on_terminal(home, "versions", ORG)

    shown = "\n".join(lines)
    assert max(map(len, lines)) <= WIDTH, shown
    header = next(line for line in lines if line.lstrip().startswith("version"))
    assert header.split()[-4:] == ["caught", "lead", "h", "FA/day"], shown
    row = next(line for line in lines if short(window_version) in line)
    assert row.split()[-3:] == ["11/12", "5.5", "0.042"], shown
    older = next(line for line in lines if short(made["deployed"]["version"]) in line)
    assert older.split()[-3:] == ["-", "-", "-"], shown
    legend = " ".join(line.strip() for line in lines)  # wrapped at the terminal's width
    assert "lead h: median hours from the first alarm to the failure" in legend


def test_on_80_columns_versions_and_history_keep_every_header_whole(
    plant: tuple[Path, dict[str, Any], str],
) -> None:
    home, _, window_version = plant

    for command in ("history", "versions"):
        lines = on_terminal(home, command, ORG, columns=80)

        shown = "\n".join(lines)
        assert max(map(len, lines)) <= 80, shown
        header = next(line for line in lines if line.lstrip().startswith("version"))
        assert "…" not in header, shown
    row = next(line for line in lines if short(window_version) in line)
    assert row.split()[-3:] == ["11/12", "5.5", "0.042"], shown


def test_piped_versions_carry_every_event_metric_in_full(
    plant: tuple[Path, dict[str, Any], str],
) -> None:
    home, made, window_version = plant

    header, *rows = trainctl(home, "versions", ORG).stdout.splitlines()

    fields = header.split("\t")
    records = {
        line.split("\t")[0]: dict(zip(fields, line.split("\t"), strict=True)) for line in rows
    }
    mine = records[window_version]
    assert (mine["eventsCaught"], mine["eventsTotal"]) == ("11", "12")
    assert mine["medianLeadTimeH"] == "5.5000" and mine["falseAlarmsPerAssetDay"] == "0.0421"
    assert mine["eventRecall"] == "0.9167"
    assert records[made["deployed"]["version"]]["eventsCaught"] == "-"


def test_json_versions_hold_the_event_metrics_under_camel_case_names(
    plant: tuple[Path, dict[str, Any], str],
) -> None:
    home, _, window_version = plant

    result = trainctl(home, "versions", ORG, "--json")

    assert result.returncode == 0, result.stderr
    mine = next(v for v in json.loads(result.stdout) if v["version"] == window_version)
    assert {key: mine["metrics"][key] for key in EVENTS} == EVENTS


def test_an_organization_without_events_sees_accuracy_and_size_and_no_event_columns(
    tmp_path: Path,
) -> None:
    home = tmp_path
    made = make_plant(home)

    lines = on_terminal(home, "versions", ORG)

    shown = "\n".join(lines)
    header = next(line for line in lines if line.lstrip().startswith("version"))
    assert header.split() == [
        "version",
        "status",
        "verdict",
        "acc.",
        "prec.",
        "recall",
        "AUC",
        "size",
    ]
    assert "caught" not in shown and "lead h" not in shown
    assert short(made["deployed"]["version"]) in shown


def test_a_validation_verdict_says_how_many_failures_were_caught_and_how_early() -> None:
    from rich.console import Console

    from training_tasks.cli.views import print_validation

    out = Console(width=WIDTH, force_terminal=True, file=io.StringIO(), color_system=None)
    report = {
        "organizationId": ORG,
        "version": "v2026-06-01T12-00-00-000Z_a1b2c3d4",
        "passed": True,
        "modelPath": "/ml/models/acme-corp/model.onnx",
        "holdoutPath": "/ml/data/acme-corp/holdout.parquet",
        "rows": 3005,
        "holdoutRunId": "r1",
        "holdoutVersion": "v1",
        "decisionThreshold": 0.5,
        "metrics": {"accuracy": 0.97, "recall": 0.86, **EVENTS},
        "checks": [],
    }

    print_validation(report, out)

    assert (
        "events caught 11 of 12, median lead 5.5 h, 0.042 false alarms per asset-day"
        in out.file.getvalue()
    )
