"""The file layout under ML_BASE_PATH; every path built here stays inside its organization's folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training_tasks.errors import ConfigError
from training_tasks.ids import check_org_id, check_version_id


@dataclass(frozen=True)
class ModelStore:
    """Paths of models and artifacts: `models/<org>/...` and `artifacts/<org>/<version>/...`."""

    base: Path

    def org_models(self, org_id: str) -> Path:
        return self.base / "models" / check_org_id(org_id)

    def version_model(self, org_id: str, version: str) -> Path:
        """The trained model of a version: `models/<org>/model_<version>.onnx`."""
        return self.org_models(org_id) / f"model_{check_version_id(version)}.onnx"

    def deployed_dir(self, org_id: str, version: str) -> Path:
        return self.org_models(org_id) / f"deployed_{check_version_id(version)}"

    def deployed_model(self, org_id: str, version: str) -> Path:
        """The deployed copy: `models/<org>/deployed_<version>/model.onnx`."""
        return self.deployed_dir(org_id, version) / "model.onnx"

    def current_link(self, org_id: str) -> Path:
        """The symlink to the deployed folder: `models/<org>/current`."""
        return self.org_models(org_id) / "current"

    def artifacts(self, org_id: str, version: str) -> Path:
        """Run artifacts: `artifacts/<org>/<version>/` (metrics, configs, validation, logs)."""
        return self.base / "artifacts" / check_org_id(org_id) / check_version_id(version)

    def data_dir(self, org_id: str, version: str) -> Path:
        """Scratch Parquet files of a run's extracted data."""
        return self.artifacts(org_id, version) / "data"

    def check_inside_org(self, org_id: str, path: Path) -> Path:
        """Resolve `path` (symlinks and `..` included) and refuse it unless it is in the org's folders."""
        resolved = Path(path).resolve()
        roots = (self.org_models(org_id).resolve(), (self.base / "artifacts" / org_id).resolve())
        if not any(resolved == root or root in resolved.parents for root in roots):
            raise ConfigError(
                "modelPath",
                f"{path} is outside the folders of organization {org_id} "
                f"({roots[0]} and {roots[1]}); use a path inside them",
            )
        return resolved
