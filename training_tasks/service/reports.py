"""The Python API of model reports: where a version's report.html is, built again on demand.

With an object store the report's files are fetched into this host's folder first, so a report
is found on any host, not only on the one that validated the version.
"""

from __future__ import annotations

from pathlib import Path

from training_tasks.errors import NotFoundError
from training_tasks.pipeline.version_objects import fetch_report_files
from training_tasks.protocol.ids import check_org_id, check_version_id
from training_tasks.registry import orgs, versions
from training_tasks.registry.rows import VersionRow
from training_tasks.reports.build import (
    DATA_FILE,
    REPORT_FILE,
    ReportUnavailable,
    rebuild_report,
)
from training_tasks.runtime import Runtime

NEWEST_VERSIONS_SEARCHED = 200


class ReportApi:
    """Reports of model versions, on the handles of a Runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def report_path(
        self,
        org_id: str,
        version: str | None = None,
        *,
        compare: str | None = None,
        rebuild: bool = False,
    ) -> Path:
        """The report of `version` (default: the newest validated one) of the organization.

        The report the validate stage wrote is returned as it is, unless `rebuild`; with
        `compare` a report against that other version of the organization is built.
        """
        check_org_id(org_id)
        orgs.get_org_row(self.rt.engine, org_id)  # an unknown organization says how to register
        row = self._version(org_id, version)
        fetch_report_files(self.rt.engine, self.rt.store, org_id, row["version"])
        folder = self.rt.store.artifacts(org_id, row["version"])
        other = None
        if compare is not None:
            compared = self._version(org_id, compare)["version"]
            fetch_report_files(self.rt.engine, self.rt.store, org_id, compared)
            other = self.rt.store.artifacts(org_id, compared)
        existing = folder / REPORT_FILE
        if other is None and not rebuild and existing.is_file() and not existing.is_symlink():
            return existing
        for needed in (folder, other):
            if needed is not None:
                self._check_data_here(org_id, needed)
        try:
            return rebuild_report(folder, other)
        except ReportUnavailable as exc:
            raise NotFoundError(
                f"no report for version {row['version']} of organization {org_id}: {exc}"
            ) from None

    def _check_data_here(self, org_id: str, folder: Path) -> None:
        """With an object store, refuse a rebuild whose report data is neither here nor in the
        store, rather than draw the report without its curves."""
        if self.rt.store.objects is None or (folder / DATA_FILE).is_file():
            return
        raise NotFoundError(
            f"the report data of version {folder.name} of organization {org_id} "
            f"({DATA_FILE}) is not on this host and the object store does not hold it, so its "
            "report cannot be built again here; run the command on the host that validated "
            "that version, or print the report as it was written (without --rebuild or --compare)"
        )

    def _version(self, org_id: str, version: str | None) -> VersionRow:
        if version is None:
            return self._newest_validated(org_id)
        row = versions.get_version(self.rt.engine, check_version_id(version))
        if row["organization_id"] != org_id:
            raise NotFoundError(
                f"version {version} belongs to organization {row['organization_id']}, not "
                f"{org_id}; list {org_id}'s versions with `trainctl versions {org_id}`"
            )
        return row

    def _newest_validated(self, org_id: str) -> VersionRow:
        for row in versions.list_versions(self.rt.engine, org_id, NEWEST_VERSIONS_SEARCHED):
            if row["validation"] is not None:
                return row
        raise NotFoundError(
            f"organization {org_id} has no validated version yet, so no report; train one with "
            f"`trainctl train {org_id} --wait`"
        )
