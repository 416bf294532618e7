"""A finished version's files fetched from the object store, for readers on any host.

`trainctl report`, the dashboard and `validate_model` read a version's artifacts, its holdout
and its models from this host's ML_BASE_PATH. With an object store (MODEL_STORE_URL=s3://...)
the host that ran the stages may be another one: these functions fetch what a reader needs into
this host's folder first, verified against the sha256 and size the run recorded (as the stages
do, see `run_objects`). Without a store every function here does nothing (or looks only here).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from training_tasks.errors import ConfigError, NotFoundError
from training_tasks.pipeline import run_objects
from training_tasks.protocol.ids import check_org_id, check_version_id
from training_tasks.protocol.keyring import Keyring
from training_tasks.protocol.object_store import ObjectMissing
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import deployments, orgs, runs, versions
from training_tasks.registry.rows import RunRow

if TYPE_CHECKING:
    from training_tasks.db.engine import Engine

REPORT_FILES = ("report.html", "report_data.json", "validation.json")
HOLDOUT_FILES = ("holdout.parquet", "events.parquet")


def version_run(engine: Engine, org_id: str, version: str) -> RunRow | None:
    """The run that made `version` of the organization; None for a version of another one."""
    record = versions.get_version(engine, check_version_id(version))
    if record["organization_id"] != check_org_id(org_id):
        return None
    return runs.get_run(engine, record["run_id"])


def stored_artifact(run: RunRow, store: ModelStore, name: str) -> bool:
    """Whether the run published `artifacts/<org>/<version>/<name>` to the object store."""
    if store.objects is None:
        return False
    org_id, version = run["organization_id"], run["version"]
    key = store.key_of(org_id, store.artifacts(org_id, version) / name)
    return key in run_objects.recorded(run)


def fetch_artifacts(
    engine: Engine, store: ModelStore, org_id: str, version: str, names: tuple[str, ...]
) -> list[Path]:
    """Fetch the named files of the version's artifacts folder where missing here."""
    if store.objects is None:
        return []
    run = version_run(engine, org_id, version)
    if run is None:
        return []
    keys = {store.key_of(org_id, store.artifacts(org_id, version) / name) for name in names}
    return run_objects.fetch_recorded(store, org_id, run_objects.recorded(run), keys.__contains__)


def fetch_report_files(engine: Engine, store: ModelStore, org_id: str, version: str) -> None:
    """Fetch what a report of `version` is read or rebuilt from, with the report data of the
    version that was deployed when it was validated (its drift reference)."""
    if store.objects is None:
        return
    fetch_artifacts(engine, store, org_id, version, REPORT_FILES)
    reference = _deployed_reference(store.artifacts(org_id, version) / "report_data.json")
    if reference is not None:
        # A reference removed since (trainctl gc): the report says it has no drift reference.
        with contextlib.suppress(NotFoundError):
            fetch_artifacts(engine, store, org_id, reference, ("report_data.json",))


def fetch_for_validation(
    engine: Engine, store: ModelStore, org_id: str, path: Path, keyring: Keyring
) -> None:
    """Fetch a model file of the organization named by its local `path` (a version's trained
    or deployed model), with the version's native model for parity, where missing here."""
    if store.objects is None:
        return
    for version in _versions_named(path):
        try:
            record = versions.get_version(engine, version)
        except NotFoundError:
            continue
        if record["organization_id"] != org_id:
            continue
        own = (store.version_model(org_id, version), store.deployed_model(org_id, version))
        if path.resolve() not in {candidate.resolve() for candidate in own}:
            continue
        local = own[0] if path.resolve() == own[0].resolve() else own[1]
        run_objects.fetch_model(store, org_id, local, record["sha256"])
        run = runs.get_run(engine, record["run_id"])
        native = store.key_of(org_id, store.artifacts(org_id, version) / "model.txt")
        recorded = run_objects.recorded(run)
        run_objects.fetch_recorded(store, org_id, recorded, native.__eq__, keyring)


def fetch_holdout(engine: Engine, store: ModelStore, run: RunRow) -> Path | None:
    """The run's holdout fetched into this host's data folder (with its events), or None when
    the run published none."""
    if store.objects is None:
        return None
    org_id, version = run["organization_id"], run["version"]
    folder = store.data_dir(org_id, version)
    keys = {store.key_of(org_id, folder / name) for name in HOLDOUT_FILES}
    recorded = run_objects.recorded(run)
    if store.key_of(org_id, folder / HOLDOUT_FILES[0]) not in recorded:
        return None
    try:
        run_objects.fetch_recorded(store, org_id, recorded, keys.__contains__)
    except ObjectMissing:  # collected since (trainctl gc): an older run's holdout may be there
        return None
    return folder / HOLDOUT_FILES[0]


def fetch_deployed(engine: Engine, store: ModelStore, org_id: str) -> Path | None:
    """The organization's deployed model here (fetched into this host's folder where missing,
    with an object store), or None when nothing is deployed or its file is gone."""
    if store.objects is None:
        return deployments.deployed_model_file(engine, store, org_id)
    current = orgs.get_org_row(engine, org_id)["current_version"]
    if not current:
        return None
    sha256 = versions.get_version(engine, current)["sha256"]
    return run_objects.fetch_model(store, org_id, store.deployed_model(org_id, current), sha256)


def _versions_named(path: Path) -> list[str]:
    """The version ids a model path may name: `model_<v>.onnx` or `deployed_<v>/model.onnx`."""
    found = []
    for part in (path.stem.removeprefix("model_"), path.parent.name.removeprefix("deployed_")):
        try:
            found.append(check_version_id(part))
        except ConfigError:  # not a version id: not a version's own model file
            continue
    return found


def _deployed_reference(data_path: Path) -> str | None:
    """The deployed version a report's data compares with, if it names a valid one."""
    from training_tasks.reports.build import ReportUnavailable, read_artifact

    try:
        data = read_artifact(data_path) or {}
        version = (data.get("deployed") or {}).get("version")
        return check_version_id(str(version)) if version else None
    except (ReportUnavailable, ConfigError):
        return None
