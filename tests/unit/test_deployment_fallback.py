"""`trainctl serve`'s fallback: the registry's deployed version, and the link when the database fails."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.registry_fixtures import migrated_engine, register
from training_tasks.protocol.paths import ModelStore
from workers.deployment_fallback import DatabaseFallback, registered_deployment

ORG = "acme"
VERSION = "v2026-06-01T12-00-01-000Z_00000001"


def test_an_organization_with_nothing_deployed_or_not_registered_has_no_deployment(
    tmp_path: Path,
) -> None:
    engine = migrated_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    try:
        register(engine, ORG)
        store = ModelStore(tmp_path / "ml")
        assert registered_deployment(engine, store, ORG) is None
        assert registered_deployment(engine, store, "globex") is None
    finally:
        engine.dispose()


def test_a_database_that_fails_leaves_the_current_link_to_answer(tmp_path: Path) -> None:
    base = tmp_path / "ml"
    model = base / "models" / ORG / f"deployed_{VERSION}" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model")
    os.symlink(f"deployed_{VERSION}", base / "models" / ORG / "current")
    empty = f"sqlite:///{tmp_path / 'never-migrated.db'}"  # no tables: every query fails
    fallback = DatabaseFallback(empty, base)
    try:
        found = fallback(ORG)
    finally:
        fallback.close()
    assert found is not None and (found.version, found.modelPath) == (VERSION, str(model))
