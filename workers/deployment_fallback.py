"""What `trainctl serve` serves while Redis holds no announcement: the registry's deployment.

The service database is the truth (version, sha256 and sequence of the last deploy or rollback),
so `trainctl serve` asks it first; when the database does not answer it uses the
`models/<org>/current` link as any embedding of the model cache does. The model cache never
imports this module, as it must not import SQLAlchemy; the CLI does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training_tasks.errors import NotFoundError
from training_tasks.protocol.hotswap import Deployment
from training_tasks.protocol.object_store import open_store
from training_tasks.protocol.paths import ModelStore
from workers.model_cache import Fallback, LinkFallback, no_fallback

log = logging.getLogger(__name__)

FALLBACK_KINDS = ("database", "disk", "none")
# Asked from the cache's listener thread: a database that hangs must not stall hot-swaps for long.
_CONNECT_TIMEOUT_S = 5
_STATEMENT_TIMEOUT_MS = 5000


def registered_deployment(engine: Any, store: ModelStore, org_id: str) -> Deployment | None:
    """The organization's deployment as the registry holds it; None if nothing is deployed."""
    # SQLAlchemy: only for --fallback database (a prediction service embedding the cache never).
    from training_tasks.registry import orgs, versions
    from training_tasks.stages.deploy import registered

    try:
        row = orgs.get_org_row(engine, org_id)
    except NotFoundError:
        return None
    version = row["current_version"]
    if not version:
        return None
    record = versions.get_version(engine, version)
    return registered(store, org_id, record, int(row["deploy_sequence"]), row["updated_at"])


class DatabaseFallback:
    """The registry's deployment of an organization; the `current` link when the database fails."""

    def __init__(
        self, database_url: str, ml_base_path: str | Path, model_store_url: str | None = None
    ) -> None:
        self._engine = _engine(database_url)
        # With an object store the deployment names its key, for a cache on another host.
        self._store = ModelStore(Path(ml_base_path), open_store(model_store_url))
        self._link = LinkFallback(ml_base_path)

    def __call__(self, org_id: str) -> Deployment | None:
        """The deployment to serve for `org_id` while Redis announces none."""
        try:
            return registered_deployment(self._engine, self._store, org_id)
        except Exception as exc:  # whatever the driver raises: the link still knows the answer
            log.warning(
                "cannot read the deployment of %s from the service database (%s); using "
                "models/%s/current until it answers",
                org_id,
                exc,
                org_id,
            )
            return self._link(org_id)

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()


@contextlib.contextmanager
def open_fallback(
    kind: str, database_url: str, ml_base_path: str | Path, model_store_url: str | None = None
) -> Iterator[Fallback]:
    """The fallback `trainctl serve --fallback KIND` uses, released at the end of the block.

    `model_store_url` is the checked MODEL_STORE_URL (s3://...) or None.
    """
    if kind not in FALLBACK_KINDS:
        raise ValueError(f"fallback {kind!r} is not one of {', '.join(FALLBACK_KINDS)}")
    if kind == "none":
        yield no_fallback
    elif kind == "disk":
        yield LinkFallback(ml_base_path)
    else:
        database = DatabaseFallback(database_url, ml_base_path, model_store_url)
        try:
            yield database
        finally:
            database.close()


def _engine(database_url: str) -> Any:
    from training_tasks.db.engine import make_engine  # SQLAlchemy: as above

    if not database_url.startswith("postgresql"):
        return make_engine(database_url)
    options = f"-c statement_timeout={_STATEMENT_TIMEOUT_MS}"
    return make_engine(
        database_url, connect_args={"connect_timeout": _CONNECT_TIMEOUT_S, "options": options}
    )
