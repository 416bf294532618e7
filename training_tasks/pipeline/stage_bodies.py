"""The body of each pipeline stage: look up what the stage needs, call it, say what to store.

The extract and validate stages are imported inside their bodies: they load pyarrow, onnxruntime
and LightGBM, and this module is imported wherever a run is sent (`trainctl`, the Python API).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from training_tasks.config.org import OrgConfig
from training_tasks.config.training import TrainingConfig, from_wire
from training_tasks.errors import ConfigError
from training_tasks.fields import iso
from training_tasks.files import write_json_atomic
from training_tasks.pipeline.disk import check_run_fits
from training_tasks.pipeline.stage_runner import StageContext, StageOutcome
from training_tasks.protocol.keyring import Keyring
from training_tasks.registry import deployments, orgs, runs, versions
from training_tasks.registry.rows import FinishedStatus, VersionRow
from training_tasks.sandbox.runner import ResourceLimits
from training_tasks.stages.deploy import deploy_version
from training_tasks.stages.train import max_model_bytes, store_model, train

log = logging.getLogger(__name__)


def _load(ctx: StageContext) -> tuple[OrgConfig, TrainingConfig, str, str]:
    run = ctx.run
    org = orgs.get_org(ctx.rt.engine, run["organization_id"])
    return org, from_wire(run["config"]), run["organization_id"], run["version"]


def _data_stats(ctx: StageContext) -> dict[str, Any]:
    """What the extract stage stored on the run; no later stage can claim the run before."""
    stats = ctx.run["data_stats"]
    assert stats is not None, f"run {ctx.run['id']} has no data_stats after its extract stage"
    return stats


def extract_body(ctx: StageContext) -> StageOutcome:
    """Pull the configured range out of the org's SCADA database into Parquet files."""
    from training_tasks.stages.extract.stage import extract  # pyarrow: only where a stage runs

    org, config, org_id, version = _load(ctx)
    check_run_fits(ctx.rt, config)
    result = extract(
        org.resolve_scada_url(),
        org.schema_config,
        config,
        ctx.rt.store.data_dir(org_id, version),
        progress=ctx.progress,
    )
    return StageOutcome(updates={"data_stats": result.as_dict()})


def train_body(ctx: StageContext) -> StageOutcome:
    """Run the training script in its sandbox and file the model (sealed if a key is set)."""
    from training_tasks.stages.extract.stage import ExtractResult  # pyarrow: as above

    org, config, org_id, version = _load(ctx)
    settings, store = ctx.rt.settings, ctx.rt.store
    data = ExtractResult.from_dict(_data_stats(ctx))
    model_cfg = org.ml_model_config
    limits = _limits(model_cfg)
    timeout_s = min(
        float(model_cfg.get("trainingTimeoutS", settings.training_timeout_s)),
        settings.training_timeout_s,
    )
    result = train(
        config,
        version=version,
        train_path=Path(data.train_path),
        holdout_path=Path(data.holdout_path),
        output_dir=store.artifacts(org_id, version),
        script=_script(org, settings.scripts_path, settings.default_script),
        python=settings.python_env,
        timeout_s=timeout_s,
        limits=limits,
        progress=ctx.progress,
        cancel=ctx.cancel,
    )
    model_path = store.version_model(org_id, version)
    keyring = Keyring.parse(settings.master_keys)
    stored = store_model(  # read from the script's folder as a regular file only, sealed in memory
        Path(result.model_path),
        model_path,
        max_bytes=max_model_bytes(limits),
        seal=_sealer(keyring, org_id, version),
        where=f"training of organization {org_id} version {version} failed",
    )
    versions.record_trained(
        ctx.rt.engine,
        version=version,
        org_id=org_id,
        run_id=ctx.run["id"],
        model_path=str(model_path),
        sha256=hashlib.sha256(stored).hexdigest(),
        size_bytes=len(stored),
        metrics=dict(result.metrics),
        now=ctx.rt.now(),
    )
    training = {"elapsedS": result.elapsed_s, "cpuS": result.cpu_s, "peakRssMb": result.peak_rss_mb}
    return StageOutcome(updates={"metrics": {"script": result.metrics, "training": training}})


def validate_body(ctx: StageContext) -> StageOutcome:
    """Score the holdout with the exported model and check every threshold."""
    # pyarrow, onnxruntime, LightGBM, scikit-learn (about 2 s): only where a stage runs.
    from training_tasks.stages.extract.stage import ExtractResult
    from training_tasks.stages.validate.inputs import run_inputs
    from training_tasks.stages.validate.recorded import recorded_by_run
    from training_tasks.stages.validate.stage import validate

    org, config, org_id, version = _load(ctx)
    store, engine = ctx.rt.store, ctx.rt.engine
    record = versions.get_version(engine, version)
    data = ExtractResult.from_dict(_data_stats(ctx))
    native = store.artifacts(org_id, version) / "model.txt"
    # What the run recorded comes from the database, never from files in the script's folder.
    derived, thresholds = recorded_by_run(config, record["metrics"])
    report = validate(
        org_id=org_id,
        version=version,
        model_path=Path(record["model_path"]),
        holdout_path=Path(data.holdout_path),
        holdout_sha256=data.holdout_sha256,
        feature_columns=config.feature_columns,
        target_column=config.target_column,
        thresholds=org.thresholds,
        # Whatever the script left under the name; validation reads only a regular file.
        native_model_path=native if os.path.lexists(native) else None,
        deployed_model_path=deployments.deployed_model_file(ctx.rt.engine, ctx.rt.store, org_id),
        script_metrics=record["metrics"],
        derived_features=derived,
        recorded_thresholds=thresholds,
        **run_inputs(config, data),
    )
    report.write(store.artifacts(org_id, version) / "validation.json")
    doc = report.as_dict()
    versions.record_validation(
        engine, version, report=doc, passed=report.passed, actor="validate", now=ctx.rt.now()
    )
    _write_manifest(ctx, record, doc)
    metrics = {
        **(ctx.run["metrics"] or {}),
        **report.metrics,
        "counts": report.counts,
        "intervals": report.intervals,
        "latency": report.latency,
        "modelSizeBytes": report.model_size_bytes,
        "memory": report.memory,
    }
    if not report.passed:
        # Keep the measured metrics on the run even though the stage ends in a rejection.
        runs.set_metrics(engine, ctx.run["id"], metrics)
    report.raise_if_rejected()
    final: FinishedStatus | None = None if ctx.run["auto_deploy"] else "validated"
    return StageOutcome(updates={"metrics": metrics}, final_status=final)


def deploy_body(ctx: StageContext) -> StageOutcome:
    """Deploy the validated version and announce it to prediction services.

    A stage delivered again after its deploy committed (the worker died before recording it)
    finds the version deployed, or deployed and since replaced, and announces nothing.
    """
    _, _, org_id, version = _load(ctx)
    outcome = deploy_version(
        ctx.rt.engine,
        ctx.rt.redis,
        ctx.rt.store,
        org_id,
        version,
        now=ctx.rt.now(),
        actor=f"run {ctx.run['id']}",
        once=True,
    )
    stats = _data_stats(ctx)
    if outcome.changed or outcome.deployment.version == version:
        stats = {**stats, "deployedSequence": outcome.deployment.sequence}
    if not outcome.changed:
        log.info(
            "run %s: version %s of %s was deployed before (now serving: %s, sequence %d); "
            "nothing deployed again%s",
            ctx.run["id"],
            version,
            org_id,
            outcome.deployment.version,
            outcome.deployment.sequence,
            f"; repaired: {', '.join(outcome.repaired)}" if outcome.repaired else "",
        )
    return StageOutcome(updates={"data_stats": stats}, final_status="succeeded")


def _sealer(keyring: Keyring, org_id: str, version: str) -> Callable[[bytes], bytes] | None:
    """Seals a model for the store when a master key is set, so no plain copy reaches it."""
    if not keyring.enabled:
        return None
    return lambda data: keyring.seal_model(data, org_id, version)


def _limits(model_cfg: Mapping[str, Any]) -> ResourceLimits:
    if "maxMemoryMb" in model_cfg:
        return ResourceLimits(memory_mb=int(model_cfg["maxMemoryMb"]))
    return ResourceLimits()


def _script(org: OrgConfig, scripts_path: Path, default: Path) -> Path:
    name = org.ml_model_config.get("script")
    if not name:
        return default
    path = (scripts_path / str(name)).resolve()
    if path.parent != scripts_path.resolve() or not path.is_file():
        raise ConfigError(
            "mlModelConfig.script",
            f"{name!r} is not a file in {scripts_path} (organization {org.organization_id}); "
            "copy the script there or remove the setting to use the bundled one",
        )
    return path


def _write_manifest(ctx: StageContext, record: VersionRow, validation: dict[str, Any]) -> None:
    run = ctx.run
    manifest = {
        "organizationId": run["organization_id"],
        "version": run["version"],
        "runId": run["id"],
        "modelPath": record["model_path"],
        "sha256": record["sha256"],
        "sizeBytes": record["size_bytes"],
        "createdAt": iso(record["created_at"]),
        "config": run["config"],
        "data": run["data_stats"],
        "validation": {
            "passed": validation.get("passed"),
            "failures": validation.get("failures"),
            "decisionThreshold": validation.get("decisionThreshold"),
            "warnings": validation.get("warnings"),
        },
    }
    write_json_atomic(
        ctx.rt.store.artifacts(run["organization_id"], run["version"]) / "manifest.json", manifest
    )
