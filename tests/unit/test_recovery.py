"""Runs whose worker died, cancels and the alerts they lead to (SQLite, fake Redis, no network)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tests.support.registry_fixtures import NOW, ORG_DOC, migrated_engine, queued_run, register
from training_tasks.config.settings import Settings
from training_tasks.errors import NotFoundError
from training_tasks.pipeline.alerts import ALERT_CHANNEL, alert_run_end
from training_tasks.pipeline.recovery import reap
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import run_control, runs
from training_tasks.runtime import Runtime


@dataclass
class Clock:
    now: Any = NOW

    def __call__(self) -> Any:
        return self.now


@dataclass
class Resent:
    """Stages the reaper sent again (what a broker would carry is tested with real workers)."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, run_id: str, org_id: str, auto_deploy: bool, stage: str) -> str:
        if self.fail:
            raise ConnectionError("broker away")
        self.calls.append((run_id, stage))
        return f"task-{len(self.calls)}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rt(sqlite_url: str, tmp_path: Path, clock: Clock) -> Iterator[Runtime]:
    engine = migrated_engine(sqlite_url)
    register(engine, "acme", ORG_DOC)
    settings = Settings.from_env({"ML_BASE_PATH": str(tmp_path / "ml")})
    yield Runtime(settings, engine, fakeredis.FakeRedis(), ModelStore(tmp_path / "ml"), now=clock)
    engine.dispose()


def started_run(rt: Runtime, stage: str = "extract", *, attempt: int = 1) -> dict[str, Any]:
    """A run whose `stage` was claimed by worker w1 with a 60 s lease."""
    run = queued_run(rt.engine, "acme", rt.now())
    index = runs.STAGES.index(stage)
    with rt.engine.begin() as conn:
        conn.execute(
            runs.training_runs.update()
            .where(runs.training_runs.c.id == run["id"])
            .values(stages_done=index, attempt=attempt)
        )
    return runs.claim_stage(
        rt.engine, run["id"], stage, owner="w1", worker="w1", now=rt.now(), ttl_s=60
    )


def test_a_run_whose_lease_is_alive_is_left_alone(rt: Runtime) -> None:
    started_run(rt)
    resent = Resent()
    assert reap(rt, resent) == [] and resent.calls == []


def test_a_run_whose_worker_died_gets_its_stage_again_counting_the_attempt(
    rt: Runtime, clock: Clock
) -> None:
    run = started_run(rt, "train")
    clock.now = NOW + timedelta(seconds=61)
    resent = Resent()
    assert reap(rt, resent) == [{"runId": run["id"], "stage": "train", "action": "resent"}]
    assert resent.calls == [(run["id"], "train")]
    after = runs.get_run(rt.engine, run["id"])
    assert (after["attempt"], after["lease_owner"], after["task_id"]) == (2, None, "task-1")
    [lost] = after["attempts"]
    assert (lost["kind"], lost["stage"], lost["worker"]) == ("worker_lost", "train", "w1")
    # The stage can be claimed again; the old message's copy would find that lease held.
    runs.claim_stage(
        rt.engine, run["id"], "train", owner="w2", worker="w2", now=clock.now, ttl_s=60
    )


def test_a_run_that_keeps_killing_its_worker_fails_after_the_last_attempt_with_an_alert(
    rt: Runtime, clock: Clock
) -> None:
    run = started_run(rt, "train", attempt=3)
    pubsub = rt.redis.pubsub()
    pubsub.subscribe(ALERT_CHANNEL)
    clock.now = NOW + timedelta(seconds=61)
    resent = Resent()
    assert reap(rt, resent)[0]["action"] == "failed" and resent.calls == []
    after = runs.get_run(rt.engine, run["id"])
    assert after["status"] == "failed" and "attempt 3 of 3" in after["error"]
    assert "not retried" in after["error"]
    messages = [
        m for m in iter(lambda: pubsub.get_message(timeout=0.1), None) if m["type"] == "message"
    ]
    [alert] = [json.loads(m["data"]) for m in messages]
    assert (alert["event"], alert["runId"], alert["stage"]) == ("run.failed", run["id"], "train")


def test_a_dead_run_with_a_cancel_request_is_cancelled_not_resent(
    rt: Runtime, clock: Clock
) -> None:
    run = started_run(rt, "train")
    doc = run_control.request_cancel(rt.engine, "acme", actor="ops", now=clock.now)
    assert doc["status"] == "cancelling"  # a worker holds it: it is asked, not told
    clock.now = NOW + timedelta(seconds=61)  # ... and that worker died before it could stop
    resent = Resent()
    assert reap(rt, resent)[0]["action"] == "cancelled" and resent.calls == []
    after = runs.get_run(rt.engine, run["id"])
    assert after["status"] == "cancelled" and "cancelled by ops" in after["error"]


def test_when_the_broker_refuses_the_resend_the_next_pass_tries_again(
    rt: Runtime, clock: Clock
) -> None:
    run = started_run(rt, "validate")
    clock.now = NOW + timedelta(seconds=61)
    assert reap(rt, Resent(fail=True)) == []
    resent = Resent()
    clock.now += timedelta(seconds=1)
    assert reap(rt, resent)[0]["action"] == "resent"
    assert resent.calls == [(run["id"], "validate")]


def test_a_queued_run_is_cancelled_at_once_and_audited(rt: Runtime) -> None:
    run = queued_run(rt.engine, "acme", NOW)
    doc = run_control.request_cancel(rt.engine, "acme", actor="ops", now=NOW)
    assert doc == {"runId": run["id"], "version": run["version"], "status": "cancelled"}
    after = runs.get_run(rt.engine, run["id"])
    assert after["status"] == "cancelled" and "before it started" in after["error"]
    with pytest.raises(NotFoundError, match="no queued or running run"):
        run_control.request_cancel(rt.engine, "acme", actor="ops", now=NOW)


@pytest.mark.parametrize(
    ("status", "stage", "event"),
    [
        ("failed", "train", "run.failed"),
        ("rejected", "validate", "run.rejected"),
        ("failed", "deploy", "deploy.failed"),
        ("cancelled", "train", None),
    ],
)
def test_the_alert_names_what_went_wrong_and_a_cancel_sends_none(
    rt: Runtime, status: str, stage: str, event: str | None
) -> None:
    run = started_run(rt, stage)
    runs.finish_failed(
        rt.engine,
        run["id"],
        status=status,
        stage=stage,
        error="recall 0.61 is below 0.70" if status == "rejected" else "boom",
        trace=None,
        actor="w1",
        now=NOW,
    )
    pubsub = rt.redis.pubsub()
    pubsub.subscribe(ALERT_CHANNEL)
    alert_run_end(rt, run["id"])
    messages = [
        m for m in iter(lambda: pubsub.get_message(timeout=0.1), None) if m["type"] == "message"
    ]
    if event is None:
        assert messages == []
        return
    [alert] = [json.loads(m["data"]) for m in messages]
    assert (alert["event"], alert["organizationId"], alert["version"], alert["stage"]) == (
        event,
        "acme",
        run["version"],
        stage,
    )


def between_stages(rt: Runtime, done: str) -> dict[str, Any]:
    """A run whose `done` stage completed at NOW and whose next message never arrived."""
    run = started_run(rt, done)
    runs.complete_stage(rt.engine, run["id"], done, owner="w1", started_at=NOW, now=NOW)
    return runs.get_run(rt.engine, run["id"])


def test_a_run_whose_next_message_was_lost_is_sent_again_after_the_stall_bound(
    rt: Runtime, clock: Clock
) -> None:
    run = between_stages(rt, "train")
    assert run["status"] == "running" and run["lease_owner"] is None
    resent = Resent()
    clock.now = NOW + timedelta(seconds=rt.settings.run_stall_s - 1)
    assert reap(rt, resent, lambda org: False) == []  # within the bound: maybe still on its way
    clock.now = NOW + timedelta(seconds=rt.settings.run_stall_s + 1)
    assert reap(rt, resent, lambda org: False) == [
        {"runId": run["id"], "stage": "validate", "action": "resent"}
    ]
    assert resent.calls == [(run["id"], "validate")]
    after = runs.get_run(rt.engine, run["id"])
    [stalled] = after["attempts"]
    assert (after["attempt"], stalled["kind"], stalled["stage"]) == (2, "stalled", "validate")
    assert reap(rt, resent, lambda org: False) == []  # it waits afresh from the resend


def test_a_run_whose_message_waits_in_its_queue_is_not_resent(rt: Runtime, clock: Clock) -> None:
    run = between_stages(rt, "extract")
    clock.now = NOW + timedelta(hours=5)
    resent = Resent()
    assert reap(rt, resent, lambda org: org == "acme") == [] and resent.calls == []
    assert runs.get_run(rt.engine, run["id"])["attempt"] == 1


def test_a_stalled_queued_run_gets_its_extract_again(rt: Runtime, clock: Clock) -> None:
    run = queued_run(rt.engine, "acme", NOW)
    clock.now = NOW + timedelta(seconds=rt.settings.run_stall_s + 1)
    resent = Resent()
    assert reap(rt, resent, lambda org: False)[0]["action"] == "resent"
    assert resent.calls == [(run["id"], "extract")]


def test_a_run_stalled_on_its_last_attempt_fails_listing_every_attempt(
    rt: Runtime, clock: Clock
) -> None:
    run = started_run(rt, "train", attempt=3)
    runs.complete_stage(rt.engine, run["id"], "train", owner="w1", started_at=NOW, now=NOW)
    clock.now = NOW + timedelta(seconds=rt.settings.run_stall_s + 1)
    resent = Resent()
    assert reap(rt, resent, lambda org: False)[0]["action"] == "failed" and resent.calls == []
    after = runs.get_run(rt.engine, run["id"])
    assert after["status"] == "failed" and "no worker took its validate message" in after["error"]
    assert [a["kind"] for a in after["attempts"]] == ["stalled"]


def test_a_run_failed_after_three_worker_losses_lists_all_three(rt: Runtime, clock: Clock) -> None:
    run = started_run(rt, "train")
    for owner in ("w2", "w3"):
        clock.now += timedelta(seconds=61)
        assert reap(rt, Resent())[0]["action"] == "resent"
        runs.claim_stage(
            rt.engine, run["id"], "train", owner=owner, worker=owner, now=clock.now, ttl_s=60
        )
    clock.now += timedelta(seconds=61)
    assert reap(rt, Resent())[0]["action"] == "failed"
    after = runs.get_run(rt.engine, run["id"])
    assert [(a["attempt"], a["kind"]) for a in after["attempts"]] == [
        (1, "worker_lost"),
        (2, "worker_lost"),
        (3, "worker_lost"),
    ]
    assert [a["worker"] for a in after["attempts"]] == ["w1", "w2", "w3"]


def test_the_broker_being_away_neither_resends_nor_counts_a_stalled_run(
    rt: Runtime, clock: Clock
) -> None:
    run = between_stages(rt, "train")
    clock.now = NOW + timedelta(seconds=rt.settings.run_stall_s + 1)

    def broker_away(org: str) -> bool:
        raise ConnectionError("broker away")

    assert reap(rt, Resent(), broker_away) == []
    assert reap(rt, Resent(fail=True), lambda org: False) == []
    assert runs.get_run(rt.engine, run["id"])["attempt"] == 1


def test_a_run_between_stages_is_cancelled_at_once(rt: Runtime) -> None:
    run = between_stages(rt, "train")
    doc = run_control.request_cancel(rt.engine, "acme", actor="ops", now=NOW)
    assert doc["status"] == "cancelled"
    after = runs.get_run(rt.engine, run["id"])
    assert (
        after["status"] == "cancelled" and "at validate (no live worker held it)" in after["error"]
    )


def test_a_run_whose_worker_died_is_cancelled_at_once(rt: Runtime, clock: Clock) -> None:
    run = started_run(rt, "train")
    clock.now = NOW + timedelta(seconds=61)
    assert run_control.request_cancel(rt.engine, "acme", actor="ops", now=clock.now)["status"] == (
        "cancelled"
    )
    assert runs.get_run(rt.engine, run["id"])["status"] == "cancelled"


def test_asking_twice_to_cancel_a_held_run_says_who_asked_first(rt: Runtime) -> None:
    started_run(rt, "train")
    first = run_control.request_cancel(rt.engine, "acme", actor="ops", now=NOW)
    again = run_control.request_cancel(rt.engine, "acme", actor="bob", now=NOW)
    assert (first["status"], again["status"], again["requestedBy"]) == (
        "cancelling",
        "cancelling",
        "ops",
    )
