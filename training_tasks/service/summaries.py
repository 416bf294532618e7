"""Runs, versions and audit events as the Python API and `trainctl --json` return them.

One key style, camelCase as on the wire, at every depth; only maps whose keys are names the user
chose (a training config, column mappings, derived features) keep their keys as given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from training_tasks.fields import iso, iso_or_none
from training_tasks.registry.rows import AuditEventRow, RunRow, VersionRow
from training_tasks.runtime import Runtime

# Values under these keys are user-supplied maps (configs, names of columns or features): their
# keys are the user's own and are returned as given.
USER_MAPS = frozenset(
    {"config", "mlModelConfig", "hyperparameters", "columnMappings", "derivedFeatures"}
)
_SNAKE = re.compile(r"_+([a-z0-9])")


def camel(name: str) -> str:
    """`data_hash` -> `dataHash`; a name without underscores is returned as it is."""
    return _SNAKE.sub(lambda m: m.group(1).upper(), name) if "_" in name.strip("_") else name


def camel_keys(value: Any) -> Any:
    """`value` with every mapping key in camelCase, except inside the USER_MAPS."""
    if isinstance(value, Mapping):
        return {
            camel(str(key)): item if key in USER_MAPS else camel_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [camel_keys(item) for item in value]
    return value


def run_summary(run: RunRow, rt: Runtime) -> dict[str, Any]:
    """A run as the API returns it (camelCase, ISO times), like the original service's result."""
    status = run["status"]
    model_path = None
    if status in ("succeeded", "validated"):
        model_path = str(rt.store.version_model(run["organization_id"], run["version"]))
    return {
        "runId": run["id"],
        "organizationId": run["organization_id"],
        "version": run["version"],
        "status": status,
        "success": status in ("succeeded", "validated"),
        "stage": run["stage"],
        "progress": camel_keys(run["progress"]),
        "modelPath": model_path,
        # The training script's own metrics keep their values; their keys follow the wire style.
        "metrics": camel_keys(run["metrics"]),
        "error": run["error"],
        "errorTrace": run["error_trace"],  # where the worker raised it, for the operator
        "trigger": run["trigger"],
        "scheduleSlot": iso_or_none(run["schedule_slot"]),
        "queuedAt": iso_or_none(run["queued_at"]),
        "startedAt": iso_or_none(run["started_at"]),
        "finishedAt": iso_or_none(run["finished_at"]),
        "stageTimings": camel_keys(run["stage_timings"]),
        "data": camel_keys(run["data_stats"]),
        "config": run["config"],
        "worker": run["worker"],
        "attempt": run["attempt"],
        "attempts": camel_keys(run["attempts"] or []),
    }


def version_summary(v: VersionRow, current: str | None) -> dict[str, Any]:
    """A model version as the API returns it."""
    validation = v["validation"] or {}
    return {
        "version": v["version"],
        "organizationId": v["organization_id"],
        "runId": v["run_id"],
        "status": v["status"],
        "deployed": v["version"] == current,
        "modelPath": v["model_path"],
        "sha256": v["sha256"],
        "sizeBytes": v["size_bytes"],
        "metrics": camel_keys(validation.get("metrics") or {}),
        "validationPassed": validation.get("passed"),
        "validationFailures": validation.get("failures") or [],
        "createdAt": iso_or_none(v["created_at"]),
        "deployedAt": iso_or_none(v["deployed_at"]),
        "removedAt": iso_or_none(v["removed_at"]),
    }


def audit_event(event: AuditEventRow) -> dict[str, Any]:
    """An audit event as the API returns it."""
    return {
        "id": event["id"],
        "organizationId": event["organization_id"],
        "event": event["event"],
        "actor": event["actor"],
        "at": iso(event["at"]),
        "details": camel_keys(event["details"] or {}),
    }
