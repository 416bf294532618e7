"""Window rows from bucketed rows: forward-fill, breaks, labels and the `example` flag, streaming.

The query (window_query.py) yields one row per (asset, bucket) that holds readings, sorted by
asset and bucket. Here, batch by batch and with numpy over whole batches:
- a bucket with no reading, or a column without a value in it, takes the column's last value of
  the asset when that value is at most maxGap older; a bucket that cannot be filled so is not
  written, which breaks the series (as a live service would: the first buckets of a long gap, up
  to maxGap after the last value, are still filled);
- the label of a bucket is taken at its end t: 1 when a failure of the asset falls in
  (t, t + horizon]; it is excluded from the examples when one falls in [t - excludeAfterHours, t].
  With a target column instead, it is the largest target of the bucket's readings (a filled
  bucket keeps the one before);
- a row is an example when it closes `length` consecutive written buckets of its asset, lies in
  its part's example range and is not excluded; every other row is context, with target 0.
Only the current asset's last values, failures and run length pass from one batch to the next,
so memory grows with neither the table nor an asset's history.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from training_tasks import fields as f
from training_tasks.config.org import EventLabels
from training_tasks.config.window_features import WindowSpec
from training_tasks.errors import ExtractError
from training_tasks.stages.extract.parts import EXAMPLE_FIELD
from training_tasks.stages.extract.plan import SourcePlan
from training_tasks.stages.extract.split import Split
from training_tasks.stages.extract.values import TIMESTAMP_TYPE, utc_stamps

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Flags = npt.NDArray[np.bool_]
_NONE = np.iinfo(np.int64).min // 4  # "no value yet": every bucket is too far from it
_US = 1_000_000
_EXPANSION = 4  # a batch expanding to more rows than this many times its own is cut in slices


@dataclass
class _Carry:
    """What the next batch needs of the asset the last one ended with."""

    asset: str | None
    values: Floats  # each column's last value (NaN: none)
    value_k: Ints  # the bucket of that value
    last_k: int = 0  # the asset's last source bucket
    target: int = 0  # that bucket's target
    written_k: int | None = None  # the asset's last written bucket
    run: int = 0  # consecutive written buckets ending there
    failures: Ints = field(default_factory=lambda: np.empty(0, np.int64))


@dataclass(frozen=True)
class _Rows:
    """The rows of one slice to write, before labels and flags."""

    source: Ints  # the slice row each one comes from
    k: Ints
    values: Floats
    target: npt.NDArray[np.int8]
    run: Ints
    group: Ints  # 0: the carried asset, then 1, 2, ... for each asset the slice starts
    failures: list[Ints]  # of each group


def window_schema(features: list[str], target: str) -> pa.Schema:
    """The columns of a window file, in the contract's order."""
    fields = [pa.field("timestamp", TIMESTAMP_TYPE), pa.field("asset_id", pa.string())]
    fields += [pa.field(name, pa.float32()) for name in features]
    fields += [pa.field(target, pa.int8()), pa.field(EXAMPLE_FIELD, pa.int8())]
    return pa.schema(fields)


class WindowRows:
    """Turns the query's batches into the rows of the training and the holdout file."""

    def __init__(
        self,
        plan: SourcePlan,
        spec: WindowSpec,
        split: Split,
        end: datetime,
        labels: EventLabels | None,
        schema: pa.Schema,
    ) -> None:
        self.plan, self.spec, self.schema, self.labels = plan, spec, schema, labels
        self.readings = 0
        roles = [c.role for c in plan.columns]
        self._features = [i for i, r in enumerate(roles) if r == "feature"]
        self._target = roles.index("target") if "target" in roles else None
        self._check = roles.index("check")
        self._events = roles.index("events") if "events" in roles else None
        self._interval_us = spec.interval_s * _US
        self._fills = spec.max_gap_s // spec.interval_s
        self._train_end = _micros(split.train_end.timestamp())
        self._split = _micros(split.split_at.timestamp())
        self._context_from = self._split - (spec.length - 1) * self._interval_us
        self._end = _micros(end.timestamp())
        width = len(self._features)
        self._carry = _Carry(None, np.full(width, np.nan), np.full(width, _NONE))

    def split(self, batch: pa.RecordBatch) -> Iterator[tuple[pa.RecordBatch, pa.RecordBatch]]:
        """The (training, holdout) rows of one batch of the query, in file order."""
        self._refuse_bad_values(batch)
        self.readings += int(pc.sum(batch.column(2)).as_py() or 0)
        for piece in self._slices(batch):
            yield self._parts(piece, self._rows(piece))

    def _slices(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        """The batch cut so that no slice expands to many more rows than the batch holds."""
        k = _ints(batch.column(1))
        gaps = np.clip(np.diff(k) - 1, 0, self._fills)  # an overestimate: ignores assets
        expanded = np.cumsum(np.concatenate(([1], gaps + 1)))
        limit = max(batch.num_rows, 1024) * _EXPANSION
        cuts = np.searchsorted(expanded, np.arange(limit, expanded[-1], limit), side="right")
        bounds = [0, *(int(c) for c in cuts), batch.num_rows]
        for start, stop in itertools.pairwise(bounds):
            if stop > start:
                yield batch.slice(start, stop - start)

    def _rows(self, batch: pa.RecordBatch) -> _Rows:
        """Insert the fillable missing buckets, forward-fill, keep what could be filled."""
        carry, n = self._carry, batch.num_rows
        k = _ints(batch.column(1))
        values = np.column_stack([_floats(batch.column(i)) for i in self._features])
        target = (
            np.zeros(n, np.int8)
            if self._target is None
            else _ints(batch.column(self._target)).astype(np.int8)
        )
        same = self._same_asset(batch.column(0))
        prev_k = np.concatenate(([carry.last_k], k[:-1]))
        gap = np.where(same, k - prev_k - 1, 0)
        if (gap < 0).any():
            raise RuntimeError("the window query returned buckets out of order")
        fills = np.minimum(gap, self._fills)
        source = np.repeat(np.arange(n), fills + 1)
        offset = np.arange(len(source)) - np.repeat(np.cumsum(fills + 1) - fills - 1, fills + 1)
        real = offset == fills[source]
        ek = np.where(real, k[source], prev_k[source] + 1 + offset)
        ev = np.where(real[:, None], values[source], np.nan)
        prev_target = np.concatenate(([carry.target], target[:-1]))
        et = np.where(real, target[source], prev_target[source]).astype(np.int8)
        new_asset = np.concatenate(([False], ~same[source] & real))  # row 0: the carried state
        last_v, last_k, ok = self._forward_fill(ek, ev, new_asset)
        group = np.cumsum(new_asset)
        kept = np.flatnonzero(ok) - 1
        run = self._runs(ek[kept], group[kept + 1])
        failures = self._failures(batch, same)
        rows = _Rows(
            source[kept], ek[kept], last_v[kept + 1], et[kept], run, group[kept + 1], failures
        )
        self._carry = self._next_carry(batch, k, target, last_v[-1], last_k[-1], rows)
        return rows

    def _same_asset(self, assets: pa.Array) -> Flags:
        """Whether each row's asset is the one of the row before (or of the carried state)."""
        n = len(assets)
        same = np.empty(n, np.bool_)
        same[0] = self._carry.asset is not None and assets[0].as_py() == self._carry.asset
        same[1:] = pc.equal(assets.slice(1), assets.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        return same

    def _forward_fill(
        self, k: Ints, values: Floats, new_asset: Flags
    ) -> tuple[Floats, Ints, Flags]:
        """Each column's value or the asset's last one, its bucket, and which rows can be written.

        Row 0 of each result is the carried state; row i + 1 is expanded row i.
        """
        carry = self._carry
        v = np.vstack((carry.values[None, :], values))
        vk = np.vstack((carry.value_k[None, :], np.where(np.isnan(values), _NONE, k[:, None])))
        kk = np.concatenate(([carry.last_k], k))
        positions = np.arange(len(v))
        last = np.maximum.accumulate(np.where(~np.isnan(v), positions[:, None], -1), axis=0)
        starts = np.maximum.accumulate(np.where(new_asset, positions, 0))
        valid = (last >= starts[:, None]) & (last >= 0)
        at, cols = np.maximum(last, 0), np.arange(v.shape[1])[None, :]
        last_v = np.where(valid, v[at, cols], np.nan)
        last_k = np.where(valid, vk[at, cols], _NONE)
        near = kk[:, None] - last_k <= self._fills  # in buckets: at most maxGap old
        ok: Flags = np.asarray((valid & near).all(axis=1))
        ok[0] = False
        return last_v, last_k, ok

    def _runs(self, k: Ints, group: Ints) -> Ints:
        """How many consecutive written buckets of its asset end at each written row."""
        carry = self._carry
        continued = carry.written_k is not None
        kk: Ints = np.concatenate(([_NONE if carry.written_k is None else carry.written_k], k))
        gg = np.concatenate(([0 if continued else -1], group))
        joined = np.concatenate(([False], (gg[1:] == gg[:-1]) & (kk[1:] == kk[:-1] + 1)))
        positions = np.arange(len(kk))
        starts = np.maximum.accumulate(np.where(joined, 0, positions))
        return np.where(starts == 0, carry.run + positions, positions - starts + 1)[1:]

    def _failures(self, batch: pa.RecordBatch, same: Flags) -> list[Ints]:
        """The failures of each asset group of the slice, group 0 being the carried asset."""
        firsts = np.flatnonzero(~same)
        if self._events is None:
            return [self._carry.failures] * (len(firsts) + 1)
        texts = batch.column(self._events).take(pa.array(firsts, pa.int64()))
        return [self._carry.failures, *(self._parse_failures(t) for t in texts.to_pylist())]

    def _parse_failures(self, text: str | None) -> Ints:
        """A first row's failure list: microseconds (PostgreSQL) or SQLite timestamp text."""
        if not text:
            return np.empty(0, np.int64)
        parts = text.split(",")
        if self.plan.backend == "postgresql":
            stamps = np.array(parts, dtype=np.int64)
        else:
            stamps = _ints(utc_stamps(pa.array(parts)).cast(pa.int64()))
        return np.sort(stamps)

    def _next_carry(
        self,
        batch: pa.RecordBatch,
        k: Ints,
        target: npt.NDArray[np.int8],
        values: Floats,
        value_k: Ints,
        rows: _Rows,
    ) -> _Carry:
        """The state of the slice's last asset."""
        last_group = len(rows.failures) - 1
        carry = self._carry
        written_k, run = (carry.written_k, carry.run) if last_group == 0 else (None, 0)
        if len(rows.k) and rows.group[-1] == last_group:
            written_k, run = int(rows.k[-1]), int(rows.run[-1])
        return _Carry(
            asset=batch.column(0)[-1].as_py(),
            values=values.copy(),
            value_k=value_k.copy(),
            last_k=int(k[-1]),
            target=int(target[-1]),
            written_k=written_k,
            run=run,
            failures=rows.failures[-1],
        )

    def _parts(self, batch: pa.RecordBatch, rows: _Rows) -> tuple[pa.RecordBatch, pa.RecordBatch]:
        """Label and flag the rows, and split them into training and holdout rows."""
        t = (rows.k + 1) * self._interval_us
        target, excluded = self._labels(t, rows)
        closes_window = (rows.run >= self.spec.length) & ~excluded
        train = t < self._train_end
        holdout = (t >= self._context_from) & (t < self._end)
        example = closes_window & (train | (holdout & (t >= self._split)))
        columns = [
            pa.array(t, TIMESTAMP_TYPE),
            batch.column(0).take(pa.array(rows.source, pa.int64())),
            *(pa.array(rows.values[:, j], pa.float32()) for j in range(rows.values.shape[1])),
            pa.array(np.where(example, target, 0).astype(np.int8)),
            pa.array(example.astype(np.int8)),
        ]
        out = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        return out.filter(pa.array(train)), out.filter(pa.array(holdout))

    def _labels(self, t: Ints, rows: _Rows) -> tuple[npt.NDArray[np.int8], Flags]:
        """Each row's target and whether a failure just before its end excludes it."""
        if self.labels is None or not len(t):
            return rows.target, np.zeros(len(t), np.bool_)
        horizon = _micros(self.labels.horizon_hours * 3600)
        after = _micros(self.labels.exclude_after_hours * 3600)
        label, excluded = np.zeros(len(t), np.int8), np.zeros(len(t), np.bool_)
        bounds = [0, *(np.flatnonzero(np.diff(rows.group)) + 1), len(t)]
        for start, stop in itertools.pairwise(bounds):
            failures = rows.failures[int(rows.group[start])]
            if len(failures) == 0:
                continue
            ends = t[start:stop]
            ahead = np.searchsorted(failures, ends, side="right")  # the first failure after t
            nxt = failures[np.minimum(ahead, len(failures) - 1)]
            label[start:stop] = (ahead < len(failures)) & (nxt > ends) & (nxt <= ends + horizon)
            before = failures[np.maximum(ahead - 1, 0)]  # the last failure at or before t
            excluded[start:stop] = (ahead > 0) & (before >= ends - after)
        return label, excluded

    def _refuse_bad_values(self, batch: pa.RecordBatch) -> None:
        check = _ints(batch.column(self._check))
        bad = np.flatnonzero(check)
        if not len(bad):
            return
        row = int(bad[0])
        index = int(check[row]) - 1
        col = self.plan.columns[
            self._features[index] if index < len(self._features) else self._target or 0
        ]
        end_s = (int(_ints(batch.column(1))[row]) + 1) * self.spec.interval_s
        end = f.iso(datetime.fromtimestamp(end_s, UTC))
        asset = batch.column(0)[row].as_py()
        what = "a number" if col.role == "feature" else "0/1 or true/false (or is NULL)"
        raise ExtractError(
            f"organization {self.plan.organization_id}: {col.field} {col.logical!r} (column "
            f"{col.physical!r}) holds a value that is not {what} in the readings of asset "
            f"{asset!r} in the bucket ending {end}; clean the column or choose another"
        )


def _micros(seconds: float) -> int:
    return round(seconds * _US)


def _ints(values: pa.Array) -> Ints:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)


def _floats(values: pa.Array) -> Floats:
    return np.asarray(values.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
