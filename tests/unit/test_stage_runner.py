"""The stage runner around every pipeline task: what reaches Celery when a stage goes wrong."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from tests.support.registry_fixtures import NOW, ORG_DOC, migrated_engine, queued_run, register
from training_tasks.config.settings import Settings
from training_tasks.errors import StageOutOfMemory
from training_tasks.pipeline import stage_runner
from training_tasks.protocol.paths import ModelStore
from training_tasks.registry import runs
from training_tasks.runtime import Runtime


@pytest.fixture
def rt(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    engine = migrated_engine(sqlite_url)
    register(engine, "acme", ORG_DOC)
    settings = Settings.from_env({"ML_BASE_PATH": str(tmp_path / "ml")})
    runtime = Runtime(settings, engine, fakeredis.FakeRedis(), ModelStore(tmp_path / "ml"))
    monkeypatch.setattr(stage_runner, "get_runtime", lambda: runtime)
    yield runtime
    engine.dispose()


def task() -> Any:
    """Who runs the stage: a worker by name, with no message behind it."""
    return stage_runner.StageCall(worker="w1@host")


def test_a_stage_that_runs_out_of_memory_fails_its_run_and_no_memory_error_reaches_celery(
    rt: Runtime,
) -> None:
    run = queued_run(rt.engine, "acme", NOW)

    def greedy(ctx: stage_runner.StageContext) -> stage_runner.StageOutcome:
        raise MemoryError()

    with pytest.raises(StageOutOfMemory, match="ran out of memory during extract"):
        stage_runner.run_stage(task(), run["id"], "extract", greedy)
    after = runs.get_run(rt.engine, run["id"])
    assert after["status"] == "failed" and "the worker goes on" in after["error"]
    [last] = after["attempts"]
    assert (last["kind"], last["stage"]) == ("failed", "extract")


def test_running_out_of_memory_outside_the_body_is_no_memory_error_either(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = queued_run(rt.engine, "acme", NOW)

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError()

    monkeypatch.setattr(runs, "claim_stage", no_memory)
    with pytest.raises(StageOutOfMemory, match="around extract"):
        stage_runner.run_stage(
            task(), run["id"], "extract", lambda ctx: stage_runner.StageOutcome()
        )
