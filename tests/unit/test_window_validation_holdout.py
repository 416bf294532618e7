"""A window holdout read for validation: each example row gets the `length` rows ending at it as
its window, whatever the chunks it is read in, and a file that breaks the layout is refused with
the row and what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training_tasks.config.window_features import WindowSpec
from training_tasks.stages.validate import windows as module
from training_tasks.stages.validate.holdout import open_holdout
from training_tasks.stages.validate.windows import WindowHoldout, window_reader

SPEC = WindowSpec.from_wire({"interval": "10min", "length": 4, "columns": ["vibration", "heat"]})
TARGET = "failure_within_horizon"
T0_S = 1_767_225_600


def holdout_table(buckets: dict[str, int], *, gap_after: int | None = None) -> pa.Table:
    """Rows of each asset in bucket order; the first length - 1 of each are context. With
    `gap_after`, the first asset's series breaks after that bucket (the bucket is skipped)."""
    rows: dict[str, list[Any]] = {k: [] for k in ("timestamp", "asset_id", "vibration", "heat")}
    rows |= {TARGET: [], "example": []}
    for number, (asset, count) in enumerate(buckets.items()):
        run = 0
        for k in range(count):
            if number == 0 and gap_after is not None and k == gap_after + 1:
                run = 0
                continue
            run += 1
            rows["timestamp"].append((T0_S + (k + 1) * 600) * 10**6)
            rows["asset_id"].append(asset)
            rows["vibration"].append(number * 100 + k)
            rows["heat"].append(-(number * 100 + k))
            rows[TARGET].append(int(k % 5 == 0))
            rows["example"].append(int(run >= SPEC.length))
    return pa.table(
        {
            "timestamp": pa.array(rows["timestamp"], pa.timestamp("us", tz="UTC")),
            "asset_id": pa.array(rows["asset_id"]),
            "vibration": pa.array(rows["vibration"], pa.float32()),
            "heat": pa.array(rows["heat"], pa.float32()),
            TARGET: pa.array(rows[TARGET], pa.int8()),
            "example": pa.array(rows["example"], pa.int8()),
        }
    )


def naive_windows(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    values = np.column_stack([table.column(c).to_numpy() for c in SPEC.columns])
    rows = np.flatnonzero(table.column("example").to_numpy() == 1)
    windows = np.stack([values[row - SPEC.length + 1 : row + 1] for row in rows])
    return windows, table.column(TARGET).to_numpy()[rows]


def read_all(path: Path) -> tuple[np.ndarray, np.ndarray]:
    holdout, problem = open_holdout(
        path, list(SPEC.columns), TARGET, read=window_reader(SPEC, TARGET)
    )
    assert isinstance(holdout, WindowHoldout), problem
    try:
        parts = list(holdout.chunks())
    finally:
        holdout.close()
    return np.concatenate([w for w, _ in parts]), np.concatenate([y for _, y in parts])


@pytest.mark.parametrize("rows_per_chunk", [3, 7, 65_536])
def test_every_example_gets_the_rows_ending_at_it_whatever_the_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows_per_chunk: int
) -> None:
    table = holdout_table({"A": 30, "B": 2, "C": 25}, gap_after=12)
    pq.write_table(table, tmp_path / "holdout.parquet", row_group_size=11)
    monkeypatch.setattr(module, "chunk_rows", lambda spec: rows_per_chunk)

    windows, labels = read_all(tmp_path / "holdout.parquet")

    want_windows, want_labels = naive_windows(table)
    assert windows.shape == (len(want_labels), SPEC.length, 2) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows, want_windows)
    np.testing.assert_array_equal(labels, want_labels)


def test_a_window_of_a_long_spec_reads_fewer_rows_at_once() -> None:
    wide = WindowSpec.from_wire({"interval": "1min", "length": 1440, "columns": list("abcdefgh")})

    assert module.chunk_rows(wide) * 1440 * 8 * 4 <= module.WINDOW_BUDGET_BYTES
    assert module.chunk_rows(SPEC) == 65_536


def refused(tmp_path: Path, table: pa.Table) -> str:
    pq.write_table(table, tmp_path / "holdout.parquet")
    holdout, problem = open_holdout(
        tmp_path / "holdout.parquet", list(SPEC.columns), TARGET, read=window_reader(SPEC, TARGET)
    )
    assert holdout is None
    return problem


def test_an_example_without_its_whole_window_is_refused_naming_the_row(tmp_path: Path) -> None:
    table = holdout_table({"A": 10, "B": 10})
    flags = table.column("example").to_numpy().copy()
    flags[11] = 1  # B's second bucket: its window would reach into A's rows
    table = table.set_column(5, "example", pa.array(flags, pa.int8()))

    problem = refused(tmp_path, table)

    assert problem.startswith("example row 11 of the holdout")
    assert "does not end 4 consecutive 10min buckets of one asset" in problem
    assert problem.endswith("train again to extract the holdout anew")


def test_a_missing_reading_in_a_window_is_refused(tmp_path: Path) -> None:
    table = holdout_table({"A": 10})
    heat = table.column("heat").to_pylist()
    heat[6] = None
    table = table.set_column(3, "heat", pa.array(heat, pa.float32()))

    problem = refused(tmp_path, table)

    assert problem.startswith("column 'heat' of the holdout")
    assert "has missing values" in problem


def test_a_holdout_of_single_readings_is_refused_for_a_window_model(tmp_path: Path) -> None:
    table = holdout_table({"A": 10}).drop_columns(["example"])

    problem = refused(tmp_path, table)

    assert "lacks the columns ['example'] of a window holdout" in problem
