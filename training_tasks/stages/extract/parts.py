"""One output file of the extract stage, written under a hidden name and published at the end."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

EXAMPLE_FIELD = "example"  # window files: 1 on examples, 0 on context rows


class Part:
    """Rows buffered into row groups of `batch_rows`; examples and positive examples counted.

    In a window file only the rows flagged `example` are examples; otherwise every row is.
    """

    def __init__(self, path: Path, schema: pa.Schema, batch_rows: int, target: str) -> None:
        self.path = path
        self.schema = schema
        self.partial = path.with_name(f".{path.name}.partial")
        self.batch_rows = batch_rows
        self.target = target
        self.rows = 0  # examples
        self.positives = 0
        self.written = 0  # rows in the file
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        dictionary = ["asset_id"] if "asset_id" in schema.names else False
        self._writer = pq.ParquetWriter(
            self.partial, schema, compression="snappy", use_dictionary=dictionary
        )

    def add(self, batch: pa.RecordBatch) -> None:
        """Append rows (of this part's schema) and count them."""
        if batch.num_rows == 0:
            return
        target = batch.column(self.target)
        if EXAMPLE_FIELD in self.schema.names:
            examples = pc.equal(batch.column(EXAMPLE_FIELD), 1)
            self.rows += int(pc.sum(examples.cast(pa.int64())).as_py() or 0)
            target = target.filter(examples)
        else:
            self.rows += batch.num_rows
        self.positives += int(pc.sum(target).as_py() or 0)
        self.written += batch.num_rows
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= self.batch_rows:
            self._flush(self._pending_rows - self._pending_rows % self.batch_rows)

    def _flush(self, rows: int) -> None:
        # Whole row groups of `batch_rows`, so the file does not depend on the driver's batches.
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._writer.write_table(table.slice(0, rows), row_group_size=self.batch_rows)
        self._pending = table.slice(rows).to_batches()
        self._pending_rows -= rows

    def close(self) -> None:
        """Write what is buffered and close the hidden file."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()

    def discard(self) -> None:
        """Close and remove the hidden file (after a failure)."""
        try:
            self._writer.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def publish(self) -> None:
        """Move the finished file to its name."""
        self.partial.replace(self.path)
