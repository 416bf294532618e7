"""What the extract stage hands on: where its files are and what is in them (`ExtractResult`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from training_tasks import fields as f


@dataclass(frozen=True)
class ExtractResult:
    """Where the extracted files are and what is in them; `as_dict` travels in Celery messages.

    `rows_*` and `positives_*` count examples: every row of a single-reading extract, the rows
    flagged `example` of a window extract.
    """

    train_path: Path
    holdout_path: Path
    rows_train: int
    rows_holdout: int
    positives_train: int
    positives_holdout: int
    split_at: datetime
    data_hash: str
    elapsed_s: float
    # The holdout file's own sha256, checked before validation scores a model on it; None in
    # rows recorded before it was kept.
    holdout_sha256: str | None = None
    # The time kept free between the last training example and the holdout.
    purge_gap_s: float = 0.0
    readings: int | None = None  # source rows read; None in rows recorded before it was kept
    events_path: Path | None = None  # events.parquet, when failure events label the rows
    window: bool = False  # one row per (asset, bucket), with the `example` flag

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: paths as text, `split_at` as ISO 8601 UTC."""
        doc = asdict(self)
        doc.update(
            train_path=str(self.train_path),
            holdout_path=str(self.holdout_path),
            split_at=f.iso(self.split_at),
            events_path=None if self.events_path is None else str(self.events_path),
        )
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ExtractResult:
        """Rebuild a result from `as_dict` output (also one written before the optional fields)."""
        readings, events = doc.get("readings"), doc.get("events_path")
        return cls(
            train_path=Path(doc["train_path"]),
            holdout_path=Path(doc["holdout_path"]),
            rows_train=int(doc["rows_train"]),
            rows_holdout=int(doc["rows_holdout"]),
            positives_train=int(doc["positives_train"]),
            positives_holdout=int(doc["positives_holdout"]),
            split_at=f.timestamp(doc["split_at"], "split_at"),
            data_hash=str(doc["data_hash"]),
            elapsed_s=float(doc["elapsed_s"]),
            holdout_sha256=doc.get("holdout_sha256"),
            purge_gap_s=float(doc.get("purge_gap_s") or 0.0),
            readings=None if readings is None else int(readings),
            events_path=None if events is None else Path(events),
            window=bool(doc.get("window", False)),
        )
