"""The training request: camelCase JSON on the wire, checked field by field, merged with defaults.

Precedence: built-in defaults < the organization's `mlModelConfig` < the request itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from training_tasks import fields as f
from training_tasks.errors import ConfigError
from training_tasks.protocol.ids import check_org_id

OBJECTIVES = ("binary", "cross_entropy")
METRICS = ("auc", "binary_logloss", "binary_error", "average_precision")

# camelCase wire name -> (LightGBM parameter name, checker)
_HYPERPARAMETERS: dict[str, tuple[str, Any]] = {
    "numLeaves": ("num_leaves", lambda v, n: f.integer(v, n, 2, 131072)),
    "learningRate": ("learning_rate", lambda v, n: f.number(v, n, 0.0, 1.0, low_open=True)),
    "featureFraction": ("feature_fraction", lambda v, n: f.number(v, n, 0.0, 1.0, low_open=True)),
    "baggingFraction": ("bagging_fraction", lambda v, n: f.number(v, n, 0.0, 1.0, low_open=True)),
    "baggingFreq": ("bagging_freq", lambda v, n: f.integer(v, n, 0, 10000)),
    "minDataInLeaf": ("min_data_in_leaf", lambda v, n: f.integer(v, n, 1, 1_000_000)),
    "maxDepth": ("max_depth", lambda v, n: -1 if v == -1 else f.integer(v, n, 1, 256)),
    "numIterations": ("num_iterations", lambda v, n: f.integer(v, n, 1, 100_000)),
    "objective": ("objective", lambda v, n: f.choice(v, n, OBJECTIVES)),
    "metric": ("metric", lambda v, n: _metric(v, n)),
    "verbosity": ("verbosity", lambda v, n: f.integer(v, n, -1, 2)),
}

DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "numLeaves": 31,
    "learningRate": 0.05,
    "featureFraction": 0.9,
    "baggingFraction": 0.8,
    "baggingFreq": 5,
    "minDataInLeaf": 20,
    "maxDepth": -1,
    "numIterations": 100,
    "objective": "binary",
    "metric": "auc",
    "verbosity": -1,
}
DEFAULT_VALIDATION_SPLIT = 0.2
DEFAULT_WINDOW_DAYS = 90
REQUEST_KEYS = (
    "organizationId",
    "dataRange",
    "hyperparameters",
    "validationSplit",
    "targetColumn",
    "featureColumns",
    "keepScratch",  # keep the extracted training data after the run (for debugging)
)


@dataclass(frozen=True)
class TrainingConfig:
    """A complete, checked training request for one organization."""

    organization_id: str
    start: datetime
    end: datetime
    hyperparameters: Mapping[str, Any]
    validation_split: float
    target_column: str
    feature_columns: tuple[str, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)
    keep_scratch: bool = False

    def lightgbm_params(self) -> dict[str, Any]:
        """The hyperparameters under LightGBM's own names."""
        return {_HYPERPARAMETERS[k][0]: v for k, v in self.hyperparameters.items()}

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON shape, as other services send it."""
        return {
            "organizationId": self.organization_id,
            "dataRange": {"startDate": f.iso(self.start), "endDate": f.iso(self.end)},
            "hyperparameters": dict(self.hyperparameters),
            "validationSplit": self.validation_split,
            "targetColumn": self.target_column,
            "featureColumns": list(self.feature_columns),
            "keepScratch": self.keep_scratch,
        }

    def as_dict(self) -> dict[str, Any]:
        """The fields under their Python names."""
        return asdict(self)


def check_request(request: object) -> Mapping[str, Any]:
    """Check the shape of a raw request (unknown keys, types, ranges) without org defaults."""
    req = f.require_mapping(request, "config")
    f.check_nesting(req, "")
    f.reject_unknown(req, REQUEST_KEYS, "")
    if "organizationId" in req:
        check_org_id(req["organizationId"])
    if "dataRange" in req:
        _data_range(req["dataRange"], "dataRange")
    if "hyperparameters" in req:
        check_hyperparameters(req["hyperparameters"], "hyperparameters")
    if "validationSplit" in req:
        _split(req["validationSplit"], "validationSplit")
    if "targetColumn" in req:
        f.string(req["targetColumn"], "targetColumn", max_len=128)
    if "featureColumns" in req:
        f.string_list(req["featureColumns"], "featureColumns")
    if "keepScratch" in req:
        f.boolean(req["keepScratch"], "keepScratch")
    return req


def check_hyperparameters(value: object, field_name: str) -> dict[str, Any]:
    """Check a (possibly partial) hyperparameter object; returns it with normalized values."""
    params = f.require_mapping(value, field_name)
    f.reject_unknown(params, _HYPERPARAMETERS, field_name)
    return {k: _HYPERPARAMETERS[k][1](v, f"{field_name}.{k}") for k, v in params.items()}


def resolve(
    request: Mapping[str, Any] | None,
    org_id: str,
    model_defaults: Mapping[str, Any],
    now: datetime,
    column_mappings: Mapping[str, str] | None = None,
) -> TrainingConfig:
    """Merge a request with the org's `mlModelConfig` defaults into a complete TrainingConfig.

    `column_mappings` (the org's schemaConfig.columnMappings) lets the target and the features
    be compared as the SCADA columns they name, not only as the names given.
    """
    req = check_request({} if request is None else request)
    if req.get("organizationId", org_id) != org_id:
        raise ConfigError(
            "organizationId",
            f"{f.shown(req['organizationId'])} does not match the organization {org_id!r} "
            "being trained",
        )
    hyper = {**DEFAULT_HYPERPARAMETERS, **model_defaults.get("hyperparameters", {})}
    hyper.update(check_hyperparameters(req.get("hyperparameters", {}), "hyperparameters"))
    if "dataRange" in req:
        start, end = _data_range(req["dataRange"], "dataRange")
    else:
        days = model_defaults.get("dataWindowDays", DEFAULT_WINDOW_DAYS)
        start, end = now - timedelta(days=days), now
    target = req.get("targetColumn", model_defaults.get("targetColumn"))
    features = req.get("featureColumns", model_defaults.get("featureColumns"))
    if target is None:
        raise ConfigError("targetColumn", "is required (in the request or the org's mlModelConfig)")
    if features is None:
        raise ConfigError(
            "featureColumns", "is required (in the request or the org's mlModelConfig)"
        )
    feature_tuple = f.string_list(features, "featureColumns")
    target = f.string(target, "targetColumn", max_len=128)
    check_target_not_feature(target, feature_tuple, column_mappings or {})
    split = req.get(
        "validationSplit", model_defaults.get("validationSplit", DEFAULT_VALIDATION_SPLIT)
    )
    return TrainingConfig(
        organization_id=org_id,
        start=start,
        end=end,
        hyperparameters=hyper,
        validation_split=_split(split, "validationSplit"),
        target_column=target,
        feature_columns=feature_tuple,
        keep_scratch=bool(req.get("keepScratch", False)),
    )


def check_target_not_feature(
    target: str, features: Sequence[str], column_mappings: Mapping[str, str], prefix: str = ""
) -> None:
    """Refuse a target that is also a feature, whatever names (logical, physical) they go by.

    Names are compared as the SCADA columns they map to, ignoring case: SQLite matches column
    names without regard to case, so 'Failure' and 'failure' would read the same column there.
    """
    column = column_mappings.get(target, target)
    for i, feature in enumerate(features):
        mapped = column_mappings.get(feature, feature)
        if mapped.casefold() == column.casefold():
            raise ConfigError(
                f"{prefix}featureColumns",
                _same_column(target, feature, i, column, mapped, prefix),
            )


def _same_column(target: str, feature: str, i: int, column: str, mapped: str, prefix: str) -> str:
    via = [
        f"schemaConfig.columnMappings maps {f.shown(name)} to {f.shown(physical)}"
        for name, physical in ((target, column), (feature, mapped))
        if name != physical
    ]
    if mapped != column:
        via.append("column names that differ only in case name the same column")
    how = f" ({'; '.join(via)})" if via else ""
    return (
        f"{prefix}targetColumn {f.shown(target)} and {prefix}featureColumns[{i}] "
        f"{f.shown(feature)} are the same SCADA column {f.shown(column)}{how}; a column is "
        f"either the target or a feature, never both: remove {f.shown(feature)} from "
        f"{prefix}featureColumns or choose another {prefix}targetColumn"
    )


def from_wire(wire: Mapping[str, Any]) -> TrainingConfig:
    """Rebuild a resolved config from its stored camelCase form."""
    rng = wire["dataRange"]
    return TrainingConfig(
        organization_id=check_org_id(wire["organizationId"]),
        start=f.timestamp(rng["startDate"], "dataRange.startDate"),
        end=f.timestamp(rng["endDate"], "dataRange.endDate"),
        hyperparameters=dict(wire["hyperparameters"]),
        validation_split=float(wire["validationSplit"]),
        target_column=wire["targetColumn"],
        feature_columns=tuple(wire["featureColumns"]),
        keep_scratch=bool(wire.get("keepScratch", False)),
    )


def _data_range(value: object, name: str) -> tuple[datetime, datetime]:
    rng = f.require_mapping(value, name)
    f.reject_unknown(rng, ("startDate", "endDate"), name)
    for key in ("startDate", "endDate"):
        if key not in rng:
            raise ConfigError(f"{name}.{key}", "is required")
    start = f.timestamp(rng["startDate"], f"{name}.startDate")
    end = f.timestamp(rng["endDate"], f"{name}.endDate")
    if start >= end:
        raise ConfigError(
            f"{name}.startDate",
            f"{f.iso(start)} is not before endDate {f.iso(end)}; give a range that has length",
        )
    return start, end


def _split(value: object, name: str) -> float:
    return f.number(value, name, 0.05, 0.5)


def _metric(value: object, name: str) -> str | list[str]:
    if isinstance(value, list):
        return [f.choice(v, f"{name}[{i}]", METRICS) for i, v in enumerate(value)]
    return f.choice(value, name, METRICS)
