"""The body of each pipeline stage: look up what the stage needs, call it, say what to store.

The extract and validate stages are imported inside their bodies: they load pyarrow, onnxruntime
and LightGBM, and this module is imported wherever a run is sent (`trainctl`, the Python API).

With an object store, each body fetches the inputs its stage needs into this host's folder and
publishes the stage's outputs before the stage counts as done (see `run_objects`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training_tasks.config.org import OrgConfig
from training_tasks.config.training import TrainingConfig, from_wire
from training_tasks.errors import ConfigError
from training_tasks.fields import iso
from training_tasks.files import write_json_atomic
from training_tasks.pipeline import run_objects, version_objects
from training_tasks.pipeline.disk import check_run_fits
from training_tasks.pipeline.stage_runner import StageContext, StageOutcome
from training_tasks.protocol.keyring import Keyring
from training_tasks.registry import orgs, runs, versions
from training_tasks.registry.rows import FinishedStatus, VersionRow
from training_tasks.sandbox.runner import ResourceLimits
from training_tasks.stages.deploy import deploy_version
from training_tasks.stages.train import max_model_bytes, store_model, train

if TYPE_CHECKING:
    from training_tasks.stages.extract.result import ExtractResult

log = logging.getLogger(__name__)
# What validation writes into the version's artifacts folder, published with an object store.
REPORT_FILES = ("validation.json", "report.html", "report_data.json", "manifest.json")


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
    store = ctx.rt.store
    result = extract(
        org.resolve_scada_url(),
        org.schema_config,
        config,
        store.data_dir(org_id, version),
        progress=ctx.progress,
    )
    published = run_objects.publish_folder(store, org_id, store.data_dir(org_id, version))
    stats = result.as_dict()
    return StageOutcome(updates={"data_stats": run_objects.with_objects(stats, published)})


def train_body(ctx: StageContext) -> StageOutcome:
    """Run the training script in its sandbox and file the model (sealed if a key is set)."""
    from training_tasks.stages.extract.stage import ExtractResult  # pyarrow: as above

    org, config, org_id, version = _load(ctx)
    settings, store = ctx.rt.settings, ctx.rt.store
    data = _local_data(ctx, ExtractResult.from_dict(_data_stats(ctx)))
    data_key = store.key_of(org_id, store.data_dir(org_id, version)) + "/"
    run_objects.fetch_recorded(store, org_id, run_objects.recorded(ctx.run), _under(data_key))
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
        fork_server=settings.training_fork_server,
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
    published = {
        **run_objects.publish_files(store, org_id, [model_path]),
        **run_objects.publish_script_folder(store, org_id, version, keyring),
    }
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
    updates: dict[str, Any] = {"metrics": {"script": result.metrics, "training": training}}
    if published:
        updates["data_stats"] = run_objects.with_objects(_data_stats(ctx), published)
    return StageOutcome(updates=updates)


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
    data = _local_data(ctx, ExtractResult.from_dict(_data_stats(ctx)))
    model_path = _fetch_inputs(ctx, record, data)
    native = store.artifacts(org_id, version) / "model.txt"
    # What the run recorded comes from the database, never from files in the script's folder.
    derived, thresholds = recorded_by_run(config, record["metrics"])
    report = validate(
        org_id=org_id,
        version=version,
        model_path=model_path,
        holdout_path=Path(data.holdout_path),
        holdout_sha256=data.holdout_sha256,
        feature_columns=config.feature_columns,
        target_column=config.target_column,
        thresholds=org.thresholds,
        # Whatever the script left under the name; validation reads only a regular file.
        native_model_path=native if os.path.lexists(native) else None,
        deployed_model_path=version_objects.fetch_deployed(ctx.rt.engine, ctx.rt.store, org_id),
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
    reports = [store.artifacts(org_id, version) / name for name in REPORT_FILES]
    reports = [path for path in reports if path.is_file()]
    published = run_objects.publish_files(store, org_id, reports)
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
    updates: dict[str, Any] = {"metrics": metrics}
    if published:
        updates["data_stats"] = run_objects.with_objects(_data_stats(ctx), published)
    return StageOutcome(updates=updates, final_status=final)


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


def _local_data(ctx: StageContext, data: ExtractResult) -> ExtractResult:
    """The extracted files in this host's data folder (with a store, the run's recorded paths
    are those of the host that extracted them; the files carry the same names here)."""
    store = ctx.rt.store
    if store.objects is None:
        return data
    folder = store.data_dir(ctx.run["organization_id"], ctx.run["version"])
    events = data.events_path
    return replace(
        data,
        train_path=folder / data.train_path.name,
        holdout_path=folder / data.holdout_path.name,
        events_path=None if events is None else folder / events.name,
    )


def _fetch_inputs(ctx: StageContext, record: VersionRow, data: ExtractResult) -> Path:
    """Fetch what validation reads (the model, the holdout and events, the script's folder) into
    this host's folder where missing; returns the model's path here."""
    store, run = ctx.rt.store, ctx.run
    org_id, version = run["organization_id"], run["version"]
    if store.objects is None:
        return Path(record["model_path"])
    keyring = Keyring.parse(ctx.rt.settings.master_keys)
    train_key = store.key_of(org_id, data.train_path)  # the training split is not needed
    wanted = _under(
        store.key_of(org_id, store.data_dir(org_id, version)) + "/",
        store.key_of(org_id, store.artifacts(org_id, version)) + "/",
    )
    run_objects.fetch_recorded(
        store, org_id, run_objects.recorded(run), lambda k: k != train_key and wanted(k), keyring
    )
    model_path = store.version_model(org_id, version)
    if run_objects.fetch_model(store, org_id, model_path, record["sha256"]) is None:
        raise ConfigError(
            "modelPath",
            f"the model of organization {org_id} version {version} is neither here nor in the "
            "object store; train again",
        )
    return model_path


def _under(*prefixes: str) -> Callable[[str], bool]:
    return lambda key: key.startswith(prefixes)


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
