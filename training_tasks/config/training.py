"""The training request: camelCase JSON on the wire, checked field by field, merged with defaults.

Precedence: built-in defaults < the organization's `mlModelConfig` < the request itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from training_tasks import fields as f
from training_tasks.config.derived import check_derived_features
from training_tasks.config.window import LatestData, check_request_window, window_range
from training_tasks.config.window_features import WindowSpec, check_windows
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
    # Reproducibility, and the knobs engineers reach for when failures are rare.
    "seed": ("seed", lambda v, n: f.integer(v, n, 0, 2**31 - 1)),
    "scalePosWeight": ("scale_pos_weight", lambda v, n: f.number(v, n, 0.0, 1e6, low_open=True)),
    "isUnbalance": ("is_unbalance", lambda v, n: f.boolean(v, n)),
    "minSumHessianInLeaf": ("min_sum_hessian_in_leaf", lambda v, n: f.number(v, n, 0.0, 1e6)),
    "lambdaL1": ("lambda_l1", lambda v, n: f.number(v, n, 0.0, 1e6)),
    "lambdaL2": ("lambda_l2", lambda v, n: f.number(v, n, 0.0, 1e6)),
    "maxBin": ("max_bin", lambda v, n: f.integer(v, n, 2, 65535)),
    "earlyStoppingRounds": ("early_stopping_round", lambda v, n: f.integer(v, n, 1, 10000)),
}
POLICY_TYPES = ("fixed", "maxF1", "precisionAtLeast", "recallAtLeast")

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
    "seed": 42,  # recorded with the version: the same request on the same data trains the same model
}
DEFAULT_VALIDATION_SPLIT = 0.2
# The target's name when schemaConfig.labels computes it from failure events.
EVENT_LABEL_COLUMN = "failure_within_horizon"
DEFAULT_INNER_VALIDATION_SPLIT = 0.2
DEFAULT_DECISION_POLICY: dict[str, Any] = {"type": "fixed", "threshold": 0.5}
REQUEST_KEYS = (
    "organizationId",
    "dataRange",
    "dataWindowDays",
    "windowEnd",
    "hyperparameters",
    "validationSplit",
    "targetColumn",
    "featureColumns",
    "innerValidationSplit",
    "decisionPolicy",
    "derivedFeatures",
    "windows",  # per-asset windows, or null: single readings even if mlModelConfig has windows
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
    # The last share (by time) of the training rows: early stopping and the threshold choice.
    inner_validation_split: float = DEFAULT_INNER_VALIDATION_SPLIT
    decision_policy: Mapping[str, Any] = field(
        default_factory=lambda: dict(DEFAULT_DECISION_POLICY)
    )
    derived_features: Mapping[str, str] = field(default_factory=dict)  # name -> expression
    # A window model's spec; its feature_columns are the window's columns, and its derived
    # features are expressions over the window statistics (`vibration__slope`).
    windows: WindowSpec | None = None
    # Time kept free between the last training example and the holdout (and the inner fold):
    # the label horizon plus one window, so no example's label or window reaches across.
    purge_gap_s: float = 0.0
    label_horizon_s: float | None = None  # set when failure events label the rows

    @property
    def tree_features(self) -> list[str]:
        """The names of the features the trees see before derived ones."""
        return self.windows.feature_names() if self.windows else list(self.feature_columns)

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
            "innerValidationSplit": self.inner_validation_split,
            "decisionPolicy": dict(self.decision_policy),
            "derivedFeatures": dict(self.derived_features),
            "windows": None if self.windows is None else self.windows.to_wire(),
            "purgeGapSeconds": self.purge_gap_s,
            "labelHorizonSeconds": self.label_horizon_s,
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
    check_request_window(req)
    if "hyperparameters" in req:
        check_hyperparameters(req["hyperparameters"], "hyperparameters")
    if "validationSplit" in req:
        _split(req["validationSplit"], "validationSplit")
    if "targetColumn" in req:
        f.string(req["targetColumn"], "targetColumn", max_len=128)
    if "featureColumns" in req:
        f.string_list(req["featureColumns"], "featureColumns")
    if "innerValidationSplit" in req:
        _inner_split(req["innerValidationSplit"], "innerValidationSplit")
    if "decisionPolicy" in req:
        check_decision_policy(req["decisionPolicy"], "decisionPolicy")
    if "derivedFeatures" in req:
        check_derived_features(req["derivedFeatures"], "derivedFeatures")
    if req.get("windows") is not None:
        check_windows(req["windows"], "windows")
    if "keepScratch" in req:
        f.boolean(req["keepScratch"], "keepScratch")
    return req


def check_hyperparameters(value: object, field_name: str) -> dict[str, Any]:
    """Check a (possibly partial) hyperparameter object; returns it with normalized values."""
    params = f.require_mapping(value, field_name)
    f.reject_unknown(params, _HYPERPARAMETERS, field_name)
    checked = {k: _HYPERPARAMETERS[k][1](v, f"{field_name}.{k}") for k, v in params.items()}
    check_class_weighting(checked, field_name)
    return checked


def check_class_weighting(params: Mapping[str, Any], field_name: str) -> None:
    """Refuse `scalePosWeight` together with `isUnbalance: true`: LightGBM takes one or the other."""
    if params.get("isUnbalance") is True and "scalePosWeight" in params:
        raise ConfigError(
            f"{field_name}.scalePosWeight",
            "cannot be combined with isUnbalance: true (LightGBM weighs the classes by one or "
            "the other); remove one of them",
        )


def check_decision_policy(value: object, field_name: str) -> dict[str, Any]:
    """Check a `decisionPolicy`: how the version's decision threshold is chosen on the inner fold.

    `{"type": "fixed", "threshold": 0.5}`, `{"type": "maxF1"}`,
    `{"type": "precisionAtLeast", "value": 0.8}` or `{"type": "recallAtLeast", "value": 0.8}`.
    """
    policy = f.require_mapping(value, field_name)
    kind = f.choice(policy.get("type"), f"{field_name}.type", POLICY_TYPES)
    wanted = {"fixed": ("threshold",), "maxF1": (), "precisionAtLeast": ("value",)}.get(
        kind, ("value",)
    )
    f.reject_unknown(policy, ("type", *wanted), field_name)
    checked: dict[str, Any] = {"type": kind}
    for key in wanted:
        if key not in policy:
            raise ConfigError(f"{field_name}.{key}", f"is required for type {kind!r}")
        checked[key] = f.number(policy[key], f"{field_name}.{key}", 0.0, 1.0)
    return checked


def resolve(
    request: Mapping[str, Any] | None,
    org_id: str,
    model_defaults: Mapping[str, Any],
    now: datetime,
    column_mappings: Mapping[str, str] | None = None,
    *,
    latest_data: LatestData | None = None,
    label_horizon_h: float | None = None,
) -> TrainingConfig:
    """Merge a request with the org's `mlModelConfig` defaults into a complete TrainingConfig.

    `column_mappings` (the org's schemaConfig.columnMappings) lets the target and the features
    be compared as the SCADA columns they name, not only as the names given. `latest_data`
    reads the newest row's time, for a window with `windowEnd: "latestData"`.
    `label_horizon_h` is the horizon of the org's schemaConfig.labels, which computes the target
    (so none may be named) and widens the purge gap. `OrgConfig.training_config` passes all this.
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
    check_class_weighting(hyper, "hyperparameters")
    if "dataRange" in req:
        start, end = _data_range(req["dataRange"], "dataRange")
    else:
        start, end = window_range(req, model_defaults, now, latest_data)
    target = _target(req, model_defaults, label_horizon_h is not None)
    windows = _windows(req, model_defaults)
    features = req.get("featureColumns", model_defaults.get("featureColumns"))
    if windows is not None:
        features = list(_window_columns(req, windows))
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
    inner = req.get(
        "innerValidationSplit",
        model_defaults.get("innerValidationSplit", DEFAULT_INNER_VALIDATION_SPLIT),
    )
    policy = req.get(
        "decisionPolicy", model_defaults.get("decisionPolicy", DEFAULT_DECISION_POLICY)
    )
    derived = req.get("derivedFeatures", model_defaults.get("derivedFeatures", {}))
    derived_field = (
        "derivedFeatures" if "derivedFeatures" in req else "mlModelConfig.derivedFeatures"
    )
    horizon_s = None if label_horizon_h is None else float(label_horizon_h) * 3600.0
    gap_s = (horizon_s or 0.0) + (windows.span_s if windows else 0)
    named = windows.feature_names() if windows else feature_tuple
    return TrainingConfig(
        organization_id=org_id,
        start=start,
        end=end,
        hyperparameters=hyper,
        validation_split=_split(split, "validationSplit"),
        target_column=target,
        feature_columns=feature_tuple,
        keep_scratch=bool(req.get("keepScratch", False)),
        inner_validation_split=_inner_split(inner, "innerValidationSplit"),
        decision_policy=check_decision_policy(policy, "decisionPolicy"),
        derived_features=_derived(derived, derived_field, named, target),
        windows=windows,
        purge_gap_s=gap_s,
        label_horizon_s=horizon_s,
    )


def _windows(req: Mapping[str, Any], model_defaults: Mapping[str, Any]) -> WindowSpec | None:
    """The request's windows (null: none), else the org's mlModelConfig.windows."""
    if "windows" in req:
        return None if req["windows"] is None else check_windows(req["windows"], "windows")
    spec = model_defaults.get("windows")
    return None if spec is None else check_windows(spec, "mlModelConfig.windows")


def _window_columns(req: Mapping[str, Any], windows: WindowSpec) -> tuple[str, ...]:
    """A window model reads its window's columns; a request naming others is refused."""
    named = req.get("featureColumns")
    if named is not None and set(f.string_list(named, "featureColumns")) != set(windows.columns):
        where = "windows" if "windows" in req else "mlModelConfig.windows"
        raise ConfigError(
            "featureColumns",
            f"{list(named)} differs from {where}.columns {list(windows.columns)}; a window model "
            "reads its window's columns: leave featureColumns out or give the same columns",
        )
    return windows.columns


def _derived(
    value: object, field_name: str, features: Sequence[str], target: str
) -> dict[str, str]:
    spec = check_derived_features(value, field_name, features)
    if target in spec:
        raise ConfigError(
            f"{field_name}.{target}",
            f"{target!r} is the targetColumn; give the derived feature another name",
        )
    return spec


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


def _target(
    req: Mapping[str, Any], model_defaults: Mapping[str, Any], event_labels: bool
) -> object:
    """The named targetColumn, or the computed label's name when events label the rows."""
    if not event_labels:
        return req.get("targetColumn", model_defaults.get("targetColumn"))
    if "targetColumn" in req:
        raise ConfigError(
            "targetColumn",
            "is not allowed: this organization's schemaConfig.labels computes the target from "
            "failure events; remove targetColumn from the request",
        )
    return EVENT_LABEL_COLUMN


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
        # Runs stored before these existed trained as the defaults say.
        inner_validation_split=float(
            wire.get("innerValidationSplit", DEFAULT_INNER_VALIDATION_SPLIT)
        ),
        decision_policy=dict(wire.get("decisionPolicy") or DEFAULT_DECISION_POLICY),
        derived_features=dict(wire.get("derivedFeatures") or {}),
        windows=None if not wire.get("windows") else WindowSpec.from_wire(wire["windows"]),
        purge_gap_s=float(wire.get("purgeGapSeconds") or 0.0),
        label_horizon_s=(
            None if wire.get("labelHorizonSeconds") is None else float(wire["labelHorizonSeconds"])
        ),
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


def _inner_split(value: object, name: str) -> float:
    return f.number(value, name, 0.05, 0.5)


def _metric(value: object, name: str) -> str | list[str]:
    if isinstance(value, list):
        return [f.choice(v, f"{name}[{i}]", METRICS) for i, v in enumerate(value)]
    return f.choice(value, name, METRICS)
