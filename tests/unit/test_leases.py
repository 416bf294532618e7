"""A running stage keeps its lease alive; a released one lapses so another worker can take over."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.registry_fixtures import NOW, queued_run, register
from training_tasks.config.settings import Settings
from training_tasks.pipeline.leases import LeaseKeeper
from training_tasks.registry import runs
from training_tasks.runtime import build_runtime


def test_a_held_lease_is_renewed_and_a_released_one_is_left_to_expire(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "ML_BASE_PATH": str(tmp_path),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'svc.db'}",
            "RUN_LEASE_TTL_S": "0.3",
        }
    )
    rt = build_runtime(settings)
    register(rt.engine, "acme")
    run = queued_run(rt.engine, "acme", NOW)
    claimed = runs.claim_stage(
        rt.engine, run["id"], "extract", owner="w1", worker="w1", now=rt.now(), ttl_s=0.3
    )
    keeper = LeaseKeeper()
    with keeper.hold(rt, run["id"], "w1"):
        time.sleep(0.8)
        renewed = runs.get_run(rt.engine, run["id"])["lease_expires_at"]
        assert renewed > claimed["lease_expires_at"]
        assert renewed > rt.now(), "the lease is still alive while the stage runs"
    time.sleep(0.5)
    assert runs.get_run(rt.engine, run["id"])["lease_expires_at"] < rt.now()
    rt.close()
