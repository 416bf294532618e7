"""An organization's configuration: model defaults, schedule, SCADA connection and table schema."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from training_tasks import fields as f
from training_tasks.config.derived import check_derived_features
from training_tasks.config.sql_url import backend_name
from training_tasks.config.training import (
    TrainingConfig,
    check_decision_policy,
    check_hyperparameters,
    check_target_not_feature,
    resolve,
)
from training_tasks.config.window import (
    LatestData,
    check_window_days,
    check_window_end,
)
from training_tasks.config.window_features import check_windows
from training_tasks.errors import ConfigError
from training_tasks.redaction import mask_url

ORG_KEYS = (
    "organizationId",
    "name",
    "mlModelConfig",
    "trainingSchedule",
    "scadaDbConfig",
    "schemaConfig",
    "alerts",
)
MODEL_KEYS = (
    "hyperparameters",
    "validationSplit",
    "targetColumn",
    "featureColumns",
    "dataWindowDays",
    "windowEnd",
    "thresholds",
    "script",
    "autoDeploy",
    "trainingTimeoutS",
    "maxMemoryMb",
    "innerValidationSplit",
    "decisionPolicy",
    "derivedFeatures",
    "windows",
)
THRESHOLD_DEFAULTS: dict[str, Any] = {
    "accuracy": 0.70,
    "precision": 0.70,
    "recall": 0.70,
    "maxModelSizeMb": 100.0,
    "maxLatencyMs": 50.0,
    "maxMemoryMb": 512.0,
    "maxParityDiff": 1e-4,
    "notWorseThanDeployed": True,
    "maxMetricDrop": 0.02,
    # Fewer positive holdout rows than this cannot judge precision or recall: the run is rejected.
    "minHoldoutPositives": 30,
}
# Gates on event-level metrics: only with schemaConfig.labels, and off unless given.
EVENT_THRESHOLDS = ("minEventRecall", "maxFalseAlarmsPerAssetDay")
SCHEMA_KEYS = ("table", "schema", "timestampColumn", "assetColumn", "columnMappings", "labels")
LABEL_KEYS = ("eventsTable", "assetColumn", "timestampColumn", "horizonHours", "excludeAfterHours")
MAX_LABEL_HOURS = 8760.0  # a year: longer horizons label almost every reading positive
SCADA_KEYS = ("url", "urlEnv")
SCHEDULE_KEYS = ("pattern", "timezone", "enabled")
ALERT_KEYS = ("webhookUrl",)
SCRIPT_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.py$")
ENV_NAME_PATTERN = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")


@dataclass(frozen=True)
class EventLabels:
    """Targets computed from a failure-events table instead of read from a column."""

    events_table: str
    asset_column: str
    timestamp_column: str
    horizon_hours: float
    exclude_after_hours: float

    def public_dict(self) -> dict[str, Any]:
        """The camelCase JSON shape, as the organization config gives it."""
        return {
            "eventsTable": self.events_table,
            "assetColumn": self.asset_column,
            "timestampColumn": self.timestamp_column,
            "horizonHours": self.horizon_hours,
            "excludeAfterHours": self.exclude_after_hours,
        }


@dataclass(frozen=True)
class SchemaConfig:
    """Where an organization's sensor rows live and how its columns map to feature names."""

    table: str
    timestamp_column: str
    asset_column: str | None = None
    schema: str | None = None
    column_mappings: Mapping[str, str] = field(default_factory=dict)
    labels: EventLabels | None = None

    def physical(self, logical: str) -> str:
        """The real column behind a logical feature or target name."""
        return self.column_mappings.get(logical, logical)


@dataclass(frozen=True)
class OrgConfig:
    """A checked organization config; the SCADA URL is held apart and never printed."""

    organization_id: str
    name: str
    ml_model_config: Mapping[str, Any]
    training_schedule: Mapping[str, Any] | None
    scada_url_env: str | None
    schema_config: SchemaConfig
    scada_url: str | None = field(default=None, repr=False)
    alert_webhook_url: str | None = None

    @property
    def thresholds(self) -> dict[str, Any]:
        """The validation thresholds: the defaults, overridden by mlModelConfig.thresholds."""
        return {**THRESHOLD_DEFAULTS, **self.ml_model_config.get("thresholds", {})}

    @property
    def auto_deploy(self) -> bool:
        """Whether a validated model is deployed at the end of its run (default: yes)."""
        return bool(self.ml_model_config.get("autoDeploy", True))

    def training_config(
        self,
        request: Mapping[str, Any] | None,
        now: datetime,
        *,
        latest_data: LatestData | None = None,
    ) -> TrainingConfig:
        """A request merged with this organization's defaults, schema and event labels."""
        labels = self.schema_config.labels
        return resolve(
            request,
            self.organization_id,
            self.ml_model_config,
            now,
            self.schema_config.column_mappings,
            latest_data=latest_data,
            label_horizon_h=None if labels is None else labels.horizon_hours,
        )

    def resolve_scada_url(self, environ: Mapping[str, str] | None = None) -> str:
        """The connection URL, from the stored value or the named environment variable."""
        if self.scada_url:
            return self.scada_url
        env = os.environ if environ is None else environ
        name = self.scada_url_env or ""
        value = env.get(name)
        if not value:
            raise ConfigError(
                "scadaDbConfig.urlEnv",
                f"environment variable {name} is not set on this worker; set it to the "
                f"SCADA database URL of organization {self.organization_id}",
            )
        return value

    def public_dict(self) -> dict[str, Any]:
        """The config as camelCase JSON with the SCADA secret masked."""
        scada: dict[str, Any] = {"urlEnv": self.scada_url_env} if self.scada_url_env else {}
        if self.scada_url:
            scada["url"] = mask_url(self.scada_url)
        schema = self.schema_config
        public: dict[str, Any] = {
            "organizationId": self.organization_id,
            "name": self.name,
            "mlModelConfig": dict(self.ml_model_config),
            "trainingSchedule": dict(self.training_schedule) if self.training_schedule else None,
            "scadaDbConfig": scada,
            "schemaConfig": {
                "table": schema.table,
                "schema": schema.schema,
                "timestampColumn": schema.timestamp_column,
                "assetColumn": schema.asset_column,
                "columnMappings": dict(schema.column_mappings),
            },
        }
        if schema.labels:
            public["schemaConfig"]["labels"] = schema.labels.public_dict()
        if self.alert_webhook_url:
            # The registry stores this dict as the organization's config, so it must round-trip:
            # parsing refuses credentials in the URL, which leaves mask_url nothing to change.
            public["alerts"] = {"webhookUrl": mask_url(self.alert_webhook_url)}
        return public


def parse_org_config(raw: object, org_id: str) -> OrgConfig:
    """Check a raw organization config; every error names the field and what is allowed."""
    doc = f.require_mapping(raw, "config")
    f.check_nesting(doc, "")
    f.reject_unknown(doc, ORG_KEYS, "")
    if doc.get("organizationId", org_id) != org_id:
        raise ConfigError(
            "organizationId", f"{f.shown(doc['organizationId'])} does not match {org_id!r}"
        )
    for key in ("mlModelConfig", "scadaDbConfig", "schemaConfig"):
        if key not in doc:
            raise ConfigError(key, "is required")
    url, url_env = _scada(doc["scadaDbConfig"])
    schedule = doc.get("trainingSchedule")
    model, schema = parse_model_config(doc["mlModelConfig"]), _schema(doc["schemaConfig"])
    if schema.labels and "targetColumn" in model:
        raise ConfigError(
            "mlModelConfig.targetColumn",
            "is not allowed together with schemaConfig.labels, which computes the target from "
            "failure events; remove one of them",
        )
    _check_against_schema(model, schema)
    if "targetColumn" in model and "featureColumns" in model:
        check_target_not_feature(
            model["targetColumn"], model["featureColumns"], schema.column_mappings, "mlModelConfig."
        )
    return OrgConfig(
        organization_id=org_id,
        name=f.string(doc.get("name", org_id), "name"),
        ml_model_config=model,
        training_schedule=None if schedule is None else parse_schedule(schedule),
        scada_url_env=url_env,
        schema_config=schema,
        scada_url=url,
        alert_webhook_url=_alert_webhook_url(doc.get("alerts")),
    )


def parse_model_config(raw: object) -> dict[str, Any]:
    """Check `mlModelConfig`: defaults for training requests plus thresholds and options."""
    name = "mlModelConfig"
    cfg = dict(f.require_mapping(raw, name))
    f.reject_unknown(cfg, MODEL_KEYS, name)
    if "hyperparameters" in cfg:
        cfg["hyperparameters"] = check_hyperparameters(
            cfg["hyperparameters"], f"{name}.hyperparameters"
        )
    if "validationSplit" in cfg:
        f.number(cfg["validationSplit"], f"{name}.validationSplit", 0.05, 0.5)
    if "targetColumn" in cfg:
        f.string(cfg["targetColumn"], f"{name}.targetColumn", max_len=128)
    if "featureColumns" in cfg:
        cfg["featureColumns"] = list(f.string_list(cfg["featureColumns"], f"{name}.featureColumns"))
    if "dataWindowDays" in cfg:
        check_window_days(cfg["dataWindowDays"], f"{name}.dataWindowDays")
    if "windowEnd" in cfg:
        check_window_end(cfg["windowEnd"], f"{name}.windowEnd")
    if "thresholds" in cfg:
        cfg["thresholds"] = _thresholds(cfg["thresholds"], f"{name}.thresholds")
    script = cfg.get("script")
    if script is not None and not (isinstance(script, str) and SCRIPT_PATTERN.fullmatch(script)):
        raise ConfigError(
            f"{name}.script",
            f"{f.shown(script)} must be a file name ending in .py inside <ML_BASE_PATH>/scripts",
        )
    if "autoDeploy" in cfg:
        f.boolean(cfg["autoDeploy"], f"{name}.autoDeploy")
    if "trainingTimeoutS" in cfg:
        f.number(cfg["trainingTimeoutS"], f"{name}.trainingTimeoutS", 1, 86400)
    if "maxMemoryMb" in cfg:
        f.integer(cfg["maxMemoryMb"], f"{name}.maxMemoryMb", 64, 1_048_576)
    if "innerValidationSplit" in cfg:
        f.number(cfg["innerValidationSplit"], f"{name}.innerValidationSplit", 0.05, 0.5)
    if "decisionPolicy" in cfg:
        cfg["decisionPolicy"] = check_decision_policy(
            cfg["decisionPolicy"], f"{name}.decisionPolicy"
        )
    if "windows" in cfg:
        windows = check_windows(cfg["windows"], f"{name}.windows")
        cfg["windows"] = {k: v for k, v in windows.to_wire().items() if not k.endswith("Seconds")}
    if "derivedFeatures" in cfg:
        # A window model's derived features are expressions over its window statistics.
        named = (
            check_windows(cfg["windows"], f"{name}.windows").feature_names()
            if "windows" in cfg
            else cfg.get("featureColumns")
        )
        cfg["derivedFeatures"] = check_derived_features(
            cfg["derivedFeatures"], f"{name}.derivedFeatures", named
        )
    return cfg


def _check_against_schema(model: Mapping[str, Any], schema: SchemaConfig) -> None:
    """Refuse model options the schema cannot serve: windows need assets, event gates events."""
    if "windows" in model and schema.asset_column is None:
        raise ConfigError(
            "schemaConfig.assetColumn",
            "is required with mlModelConfig.windows: windows are built per asset",
        )
    gates = [k for k in EVENT_THRESHOLDS if k in model.get("thresholds", {})]
    if gates and schema.labels is None:
        raise ConfigError(
            f"mlModelConfig.thresholds.{gates[0]}",
            "needs failure events: set schemaConfig.labels, or remove the gate",
        )


def parse_schedule(raw: object) -> dict[str, Any]:
    """Check `trainingSchedule` (`pattern`, `timezone`, `enabled`); the pattern is normalised."""
    name = "trainingSchedule"
    sched = f.require_mapping(raw, name)
    f.reject_unknown(sched, SCHEDULE_KEYS, name)
    # Imported here: croniter costs ~30 ms and most users of this module never parse a schedule.
    from beat_schedules.cron import CronSchedule

    cron = CronSchedule.parse(sched.get("pattern"), sched.get("timezone", "UTC"), field=name)
    enabled = f.boolean(sched.get("enabled", True), f"{name}.enabled")
    return {"pattern": cron.pattern, "timezone": cron.timezone, "enabled": enabled}


def _thresholds(raw: object, name: str) -> dict[str, Any]:
    th = dict(f.require_mapping(raw, name))
    f.reject_unknown(th, (*THRESHOLD_DEFAULTS, *EVENT_THRESHOLDS), name)
    if "minEventRecall" in th:
        th["minEventRecall"] = f.number(th["minEventRecall"], f"{name}.minEventRecall", 0.0, 1.0)
    if "maxFalseAlarmsPerAssetDay" in th:
        th["maxFalseAlarmsPerAssetDay"] = f.number(
            th["maxFalseAlarmsPerAssetDay"], f"{name}.maxFalseAlarmsPerAssetDay", 0.0, 1e6
        )
    for key in ("accuracy", "precision", "recall", "maxMetricDrop"):
        if key in th:
            th[key] = f.number(th[key], f"{name}.{key}", 0.0, 1.0)
    for key in ("maxModelSizeMb", "maxLatencyMs", "maxMemoryMb", "maxParityDiff"):
        if key in th:
            th[key] = f.number(th[key], f"{name}.{key}", 0.0, 1e6, low_open=True)
    if "minHoldoutPositives" in th:
        th["minHoldoutPositives"] = f.integer(
            th["minHoldoutPositives"], f"{name}.minHoldoutPositives", 0, 1_000_000
        )
    if "notWorseThanDeployed" in th:
        f.boolean(th["notWorseThanDeployed"], f"{name}.notWorseThanDeployed")
    return th


def _scada(raw: object) -> tuple[str | None, str | None]:
    name = "scadaDbConfig"
    cfg = f.require_mapping(raw, name)
    f.reject_unknown(cfg, SCADA_KEYS, name)
    if ("url" in cfg) == ("urlEnv" in cfg):
        raise ConfigError(
            name,
            "give exactly one of url (a SQLAlchemy URL) or urlEnv (an environment variable name)",
        )
    if "urlEnv" in cfg:
        env = f.string(cfg["urlEnv"], f"{name}.urlEnv", max_len=128)
        if not ENV_NAME_PATTERN.fullmatch(env):
            raise ConfigError(
                f"{name}.urlEnv", f"{f.shown(env)} is not an environment variable name"
            )
        return None, env
    url = f.string(cfg["url"], f"{name}.url", max_len=2048)
    try:
        backend = backend_name(url)
    except ValueError:
        raise ConfigError(
            f"{name}.url", "is not a SQLAlchemy URL (postgresql://..., sqlite:///...)"
        ) from None
    if backend not in ("postgresql", "sqlite"):
        raise ConfigError(
            f"{name}.url", f"backend {f.shown(backend)} is not supported; use postgresql or sqlite"
        )
    return url, None


def _alert_webhook_url(raw: object) -> str | None:
    """Check `alerts` (`webhookUrl`): an http(s) URL with a host and no credentials in it."""
    if raw is None:
        return None
    cfg = f.require_mapping(raw, "alerts")
    f.reject_unknown(cfg, ALERT_KEYS, "alerts")
    if cfg.get("webhookUrl") is None:
        return None
    name = "alerts.webhookUrl"
    url = f.string(cfg["webhookUrl"], name, max_len=2048)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(name, f"{f.shown(mask_url(url))} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            name, f"{f.shown(mask_url(url))} is not an http:// or https:// URL with a host"
        )
    if "@" in parts.netloc:
        raise ConfigError(
            name,
            "must not hold a user or password: the organization config is shown by "
            "`trainctl org show` and kept in the audit trail; set a URL with credentials "
            "as ALERT_WEBHOOK_URL on the workers instead",
        )
    return url


def _schema(raw: object) -> SchemaConfig:
    name = "schemaConfig"
    cfg = f.require_mapping(raw, name)
    f.reject_unknown(cfg, SCHEMA_KEYS, name)
    mappings = f.require_mapping(cfg.get("columnMappings", {}), f"{name}.columnMappings")
    checked = {
        f.string(k, f"{name}.columnMappings", max_len=128): f.string(
            v, f.child(f"{name}.columnMappings", k), max_len=128
        )
        for k, v in mappings.items()
    }
    asset = cfg.get("assetColumn")
    schema = cfg.get("schema")
    labels = None if cfg.get("labels") is None else _labels(cfg["labels"], f"{name}.labels")
    if labels and asset is None:
        raise ConfigError(
            f"{name}.assetColumn",
            "is required with schemaConfig.labels: failures are matched to readings by asset",
        )
    return SchemaConfig(
        table=f.string(cfg.get("table"), f"{name}.table", max_len=128),
        timestamp_column=f.string(
            cfg.get("timestampColumn"), f"{name}.timestampColumn", max_len=128
        ),
        asset_column=None if asset is None else f.string(asset, f"{name}.assetColumn", max_len=128),
        schema=None if schema is None else f.string(schema, f"{name}.schema", max_len=128),
        column_mappings=checked,
        labels=labels,
    )


def _labels(raw: object, name: str) -> EventLabels:
    """Check `schemaConfig.labels`: the events table, its columns and the two windows."""
    cfg = f.require_mapping(raw, name)
    f.reject_unknown(cfg, LABEL_KEYS, name)
    for key in LABEL_KEYS:
        if key not in cfg:
            raise ConfigError(f"{name}.{key}", f"is required; {name} needs {', '.join(LABEL_KEYS)}")
    return EventLabels(
        events_table=f.string(cfg["eventsTable"], f"{name}.eventsTable", max_len=128),
        asset_column=f.string(cfg["assetColumn"], f"{name}.assetColumn", max_len=128),
        timestamp_column=f.string(cfg["timestampColumn"], f"{name}.timestampColumn", max_len=128),
        horizon_hours=f.number(
            cfg["horizonHours"], f"{name}.horizonHours", 0, MAX_LABEL_HOURS, low_open=True
        ),
        exclude_after_hours=f.number(
            cfg["excludeAfterHours"], f"{name}.excludeAfterHours", 0, MAX_LABEL_HOURS
        ),
    )
