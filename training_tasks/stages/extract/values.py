"""Source values in the output files' types: UTC timestamps, float32 features, 0/1 targets."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from training_tasks import fields as f
from training_tasks.errors import ExtractError
from training_tasks.stages.extract.plan import SourceColumn, SourcePlan

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
_BINARY_TEXT = pa.array(["0", "1", "0.0", "1.0", "false", "true"])
_BINARY_VALUE = pa.array([0, 1, 0, 1, 0, 1], pa.int8())


def normalize(raw: pa.RecordBatch, plan: SourcePlan, schema: pa.Schema) -> pa.RecordBatch:
    """A batch of a single-reading query in the output types; bad values refused by name."""
    org = plan.organization_id
    arrays: list[pa.Array] = []
    for col, values, field in zip(plan.columns, raw.columns, schema, strict=True):
        if col.role == "target":
            arrays.append(_binary_target(values, arrays[0], col, org))
            continue
        try:
            if col.role == "timestamp":
                arrays.append(utc_stamps(values))
            else:
                arrays.append(values.cast(field.type, safe=False))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise _bad_values(col, values, field.type, org, exc) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def utc_stamps(values: pa.Array) -> pa.Array:
    """Timestamps of either backend as UTC microseconds (zoneless ones are UTC)."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            # SQLite keeps timestamps as text, as SQLAlchemy writes them: UTC without a zone.
            return values.cast(pa.timestamp("us")).cast(TIMESTAMP_TYPE)
        except pa.ArrowInvalid:
            return values.cast(TIMESTAMP_TYPE)  # text with explicit offsets
    # A column without a zone holds UTC by this service's convention.
    return values.cast(TIMESTAMP_TYPE)


def _binary_target(values: pa.Array, stamps: pa.Array, col: SourceColumn, org: str) -> pa.Array:
    where = f"organization {org}: targetColumn {col.logical!r} (column {col.physical!r})"
    if values.null_count:
        first = stamps.filter(values.is_null())[0].as_py()
        raise ExtractError(
            f"{where} is NULL in {values.null_count} rows of a batch, the first at "
            f"{f.iso(first)}; fill or filter those rows in the source, or choose another "
            "targetColumn"
        )
    kind = values.type
    if pa.types.is_boolean(kind):
        return values.cast(pa.int8())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        index = pc.index_in(pc.utf8_lower(pc.utf8_trim_whitespace(values)), _BINARY_TEXT)
        valid = index.is_valid()
        if pc.all(valid).as_py():
            return pc.take(_BINARY_VALUE, index)
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        valid = pc.is_in(values, pa.array([0, 1]).cast(kind))
        if pc.all(valid).as_py():
            return values.cast(pa.int8())
    else:
        raise ExtractError(f"{where} has type {kind}; it must hold 0/1 or true/false values")
    example = values.filter(pc.invert(valid))[0].as_py()
    raise ExtractError(
        f"{where} is not binary: it holds {example!r} besides 0/1 (true/false); the target "
        "must mark failures with 1 and normal rows with 0: choose or build such a column"
    )


def _bad_values(
    col: SourceColumn, values: pa.Array, kind: pa.DataType, org: str, exc: Exception
) -> ExtractError:
    sample = next((v for v in values.slice(0, 1000).to_pylist() if v is not None), None)
    what = "timestamps" if col.role == "timestamp" else f"{kind} values"
    return ExtractError(
        f"organization {org}: {col.field} (column {col.physical!r}) holds values that are not "
        f"{what}, such as {sample!r} ({str(exc).splitlines()[0]}); point {col.field} at "
        "another column or fix the data"
    )
