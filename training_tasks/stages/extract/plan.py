"""What the extract stage reads: the checked columns and query of one organization's SCADA table.

Built by `source.plan_source`; read by the stage that streams it and by `errors`, which names a
column in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TIMESTAMP_FIELD = "timestamp"
ASSET_FIELD = "asset_id"
# label: from events; bucket, count, check and events: computed by a window query.
Role = Literal[
    "timestamp", "asset", "feature", "target", "label", "bucket", "count", "check", "events"
]


@dataclass(frozen=True)
class SourceColumn:
    """One selected column: the config field that names it, its output and physical names."""

    field: str
    logical: str
    physical: str
    role: Role


@dataclass(frozen=True)
class SourcePlan:
    """A checked query against one organization's SCADA table, ready to stream."""

    organization_id: str
    backend: Literal["postgresql", "sqlite"]
    sql: str
    parameters: tuple[str, ...]
    columns: tuple[SourceColumn, ...]
    driver_uri: str  # holds the password: never log it, use masked_url
    masked_url: str
    # PostgreSQL: the session settings the parameters are bound into, in order (see source.py).
    settings: tuple[str, ...] = ()
