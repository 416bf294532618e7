"""The typed rows of the registry say what the tables hold: the same columns and statuses."""

from __future__ import annotations

from typing import get_type_hints

import pytest
from sqlalchemy import Table

from training_tasks.db import tables
from training_tasks.registry import rows

ROWS = [
    (rows.OrgRow, tables.organizations),
    (rows.RunRow, tables.training_runs),
    (rows.VersionRow, tables.model_versions),
    (rows.ScheduleSlotRow, tables.schedule_slots),
    (rows.AuditEventRow, tables.audit_events),
]


@pytest.mark.parametrize(("row", "table"), ROWS)
def test_each_typed_row_has_exactly_its_tables_columns(row: type, table: Table) -> None:
    assert list(get_type_hints(row)) == [column.name for column in table.columns]


@pytest.mark.parametrize(("row", "table"), ROWS)
def test_a_column_may_be_none_in_its_typed_row_exactly_when_it_is_nullable(
    row: type, table: Table
) -> None:
    hints = get_type_hints(row)
    for column in table.columns:
        allows_none = type(None) in getattr(hints[column.name], "__args__", ())
        assert allows_none == bool(column.nullable), f"{table.name}.{column.name}"


def test_the_one_active_run_index_covers_exactly_the_active_statuses() -> None:
    index = next(i for i in tables.training_runs.indexes if i.name == "uq_training_runs_active_org")
    where = str(index.dialect_options["postgresql"]["where"])
    listed = ", ".join(f"'{status}'" for status in rows.ACTIVE_STATUSES)
    assert where == f"status IN ({listed})"


def test_a_run_is_active_or_finished_never_both() -> None:
    assert not set(rows.ACTIVE_STATUSES) & set(rows.FINISHED_STATUSES)
