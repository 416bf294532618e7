"""The file layout under ML_BASE_PATH; every path built here stays inside its organization's folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from training_tasks.errors import ConfigError
from training_tasks.protocol.ids import check_org_id, check_version_id
from training_tasks.protocol.keys import ORG_FOLDERS, check_key

if TYPE_CHECKING:
    from training_tasks.protocol.object_store import ObjectStore


@dataclass(frozen=True)
class ModelStore:
    """Paths of models, artifacts and extracted data: `models/<org>/...`,
    `artifacts/<org>/<version>/...` and `data/<org>/<version>/...`.

    `objects` is the object store that holds the same files under the same relative keys
    (MODEL_STORE_URL set to s3://...); None when ML_BASE_PATH is the only copy.
    """

    base: Path
    objects: ObjectStore | None = field(default=None, compare=False, repr=False)

    def key_of(self, org_id: str, path: Path) -> str:
        """The object key of a path built here: its path under ML_BASE_PATH, with '/'."""
        try:
            relative = Path(path).relative_to(self.base)
        except ValueError:
            raise ConfigError(
                "key", f"{path} is not under {self.base}; only files of the store have keys"
            ) from None
        return check_key(org_id, PurePosixPath(*relative.parts).as_posix())

    def path_of(self, org_id: str, key: str) -> Path:
        """The local path of an object key under ML_BASE_PATH (the key checked first)."""
        return self.base.joinpath(*check_key(org_id, key).split("/"))

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
        """A run's extracted Parquet files: `data/<org>/<version>/`.

        Outside the artifacts folder on purpose: that folder is the training script's writable
        working folder, and validation must score a holdout the script could not rewrite.
        """
        return self.base / "data" / check_org_id(org_id) / check_version_id(version)

    def legacy_data_dir(self, org_id: str, version: str) -> Path:
        """Where runs extracted their data before `data/` existed: `artifacts/<org>/<version>/data`."""
        return self.artifacts(org_id, version) / "data"

    def check_inside_org(self, org_id: str, path: Path) -> Path:
        """Resolve `path` (symlinks and `..` included) and refuse it unless it is in the org's folders."""
        resolved = Path(path).resolve()
        roots = [(self.base / kind / check_org_id(org_id)).resolve() for kind in ORG_FOLDERS]
        if not any(resolved == root or root in resolved.parents for root in roots):
            raise ConfigError(
                "modelPath",
                f"{path} is outside the folders of organization {org_id} "
                f"({', '.join(map(str, roots))}); use a path inside them",
            )
        return resolved
