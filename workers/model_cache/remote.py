"""Deployed models fetched by key from the object store into the cache's own folder.

A cache on another host than the training service is given the store (MODEL_STORE_URL,
s3://bucket/prefix, with the AWS_* variables for endpoint and credentials) and a local folder.
A deployment that names a `modelKey` is downloaded to `<folder>/<modelKey>` under a temporary
name, checked against the deployment's sha256 and only then renamed into place; `load_model`
reads and checks it again before it serves. A file already there with that sha256 is not fetched
again. A deployment without a key (an older publisher), or a cache without a store, uses
`modelPath` as before.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from training_tasks.errors import TrainingServiceError
from training_tasks.protocol.hotswap import Deployment
from training_tasks.protocol.keys import check_key
from training_tasks.protocol.object_store import ObjectStore, check_store_url, open_store
from workers.model_cache.errors import ModelRejected

STORE_URL_VARIABLE = "MODEL_STORE_URL"


class FromEnvironment:
    """Marks a setting read from this process's environment."""

    def __repr__(self) -> str:
        return "FROM_ENV"


FROM_ENV = FromEnvironment()


def store_for(
    model_store_url: str | FromEnvironment | None, ml_base_path: Path
) -> ObjectStore | None:
    """The object store a cache fetches from: the URL given, or MODEL_STORE_URL; None if unset."""
    if isinstance(model_store_url, FromEnvironment):
        model_store_url = os.environ.get(STORE_URL_VARIABLE) or None
    return open_store(check_store_url(model_store_url, ml_base_path))


def localize(objects: ObjectStore | None, ml_base_path: Path, deployment: Deployment) -> Deployment:
    """The deployment with `modelPath` at a verified local copy of its `modelKey` (fetched if
    needed); unchanged without a store or a key."""
    key = deployment.modelKey
    if objects is None or key is None:
        return deployment
    org_id = deployment.organizationId
    try:
        if not check_key(org_id, key).startswith(f"models/{org_id}/"):
            raise ModelRejected(f"model key {key!r} is not in models/{org_id}/")
        local = ml_base_path.joinpath(*key.split("/"))
        objects.fetch(org_id, key, local, deployment.sha256)
    except TrainingServiceError as exc:  # missing, corrupt, store unreachable, bad key
        raise ModelRejected(
            f"cannot fetch the model of version {deployment.version} from the object store "
            f"({exc}); the served model stays"
        ) from None
    return replace(deployment, modelPath=str(local))
