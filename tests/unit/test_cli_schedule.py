"""`trainctl schedule` and `trainctl schedules` as an operator uses them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.test_cli import BASE_ORG, trainctl

NO_REDIS = "redis://127.0.0.1:1/0"  # nothing listens: the commands must not need Redis


def run(tmp_path: Path, *args: str) -> Any:
    return trainctl(tmp_path, *args, REDIS_URL=NO_REDIS)


def registered(tmp_path: Path) -> None:
    config = tmp_path / "org.json"
    config.write_text(json.dumps(BASE_ORG))
    assert run(tmp_path, "org", "create", "acme-corp", "--config", str(config)).returncode == 0


def test_schedule_help_explains_the_pattern_the_examples_and_the_dst_policy(tmp_path: Path) -> None:
    out = run(tmp_path, "schedule", "--help").stdout
    for words in ("five-field cron pattern", "--timezone", "--preview", "--disable", "--delete"):
        assert words in out
    assert 'trainctl schedule acme-corp "0 2 * * 0" --timezone America/New_York' in out
    assert "does not exist" in out and "happens twice" in out


def test_a_schedule_is_set_listed_disabled_and_removed(tmp_path: Path) -> None:
    registered(tmp_path)
    made = run(tmp_path, "schedule", "acme-corp", "0 2 * * 0", "--timezone", "America/New_York")
    assert made.returncode == 0, made.stderr
    assert "0 2 * * 0 in America/New_York, enabled" in made.stdout
    listed = json.loads(run(tmp_path, "schedules", "--json").stdout)
    (row,) = listed["schedules"]
    assert (row["organizationId"], row["pattern"], row["enabled"]) == (
        "acme-corp",
        "0 2 * * 0",
        True,
    )
    assert row["nextRunLocal"].endswith(("T02:00:00-05:00", "T02:00:00-04:00", "T03:00:00-04:00"))
    assert "Redis did not answer" in run(tmp_path, "schedules").stderr  # piped: records only
    disabled = run(tmp_path, "schedule", "acme-corp", "--disable")
    assert "disabled" in disabled.stdout and "next run: -" in disabled.stdout
    assert run(tmp_path, "schedule", "acme-corp", "--delete").returncode == 0
    assert "has no training schedule" in run(tmp_path, "schedule", "acme-corp").stdout
    audit = run(tmp_path, "audit", "acme-corp").stdout
    for event in ("schedule.created", "schedule.changed", "schedule.deleted"):
        assert event in audit


def test_a_preview_over_a_year_marks_the_spring_gap_and_saves_nothing(tmp_path: Path) -> None:
    registered(tmp_path)
    shown = run(
        tmp_path,
        "schedule",
        "acme-corp",
        "0 2 * * 0",
        "-z",
        "America/New_York",
        "--preview",
        "60",
        "--json",
    )
    assert shown.returncode == 0, shown.stderr
    items = json.loads(shown.stdout)
    assert len(items) == 60
    (gap,) = [i for i in items if i["note"]]  # US clocks go forward on a Sunday at 02:00
    assert "02:00 does not exist" in gap["note"] and gap["scheduledLocal"].endswith(
        "T03:00:00-04:00"
    )
    assert "has no training schedule" in run(tmp_path, "schedule", "acme-corp").stdout


def test_a_bad_pattern_is_refused_naming_the_field_and_keeps_the_schedule(tmp_path: Path) -> None:
    registered(tmp_path)
    run(tmp_path, "schedule", "acme-corp", "0 2 * * 0")
    for pattern, words in (("61 2 * * *", "trainingSchedule.pattern"), ("0 0 31 2 *", "never")):
        bad = run(tmp_path, "schedule", "acme-corp", pattern)
        assert bad.returncode == 1 and words in bad.stderr
    zone = run(tmp_path, "schedule", "acme-corp", "--timezone", "Moon/Base")
    assert zone.returncode == 1 and "trainingSchedule.timezone" in zone.stderr
    assert "0 2 * * 0 in UTC, enabled" in run(tmp_path, "schedule", "acme-corp").stdout
