"""The Python client follows a run through `training.status`, against a real worker and Redis
(and RabbitMQ as the broker, for the tests that send through it).

What a service that embeds `TrainingClient` sees: it submits, reads the run's status document
while it runs, waits until the run has finished (with a bound that names the run when it passes),
and gets an error naming the id when it asks about a run the service does not know.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tests.support.processes import (
    Worker,
    broker_url_of,
    celery_worker,
    on_both_brokers,
    service_env,
)
from training_tasks.client import (
    InvalidRequestError,
    RunNotFoundError,
    RunTimeoutError,
    TrainingClient,
)
from training_tasks.config.settings import BUNDLED_SCRIPT, Settings
from training_tasks.demo import scada
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 30
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-01-31T00:00:00Z"}
RUN_TIMEOUT_S = 180.0
STATUS_TIMEOUT_S = 30.0
# The organization's own script waits before it trains, so the run is seen running for sure.
SLOW_SCRIPT = """
import runpy, sys, time
time.sleep({delay_s})
sys.argv[0] = {bundled!r}
runpy.run_path({bundled!r}, run_name="__main__")
"""


@dataclass
class Stack:
    env: dict[str, str]
    service: TrainingService


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, broker: str, postgres_url: str) -> Iterator[Stack]:
    base = tmp_path / "ml"
    scada_path = tmp_path / "scada.db"
    frame = scada.generate_sensor_frame(assets=6, days=DAYS, interval_min=10, seed=7, start=START)
    scada.write_scada_sqlite(scada_path, frame, scada.ACME_LAYOUT)
    (base / "scripts").mkdir(parents=True)
    (base / "scripts" / "slow_train.py").write_text(
        SLOW_SCRIPT.format(delay_s=3, bundled=str(BUNDLED_SCRIPT))
    )
    env = service_env(
        redis_url=redis_url, database_url=postgres_url, ml_base_path=base, broker_url=broker
    )
    service = TrainingService(build_runtime(Settings.from_env(env)))
    config = scada.demo_org_config("acme-corp", f"sqlite:///{scada_path}", scada.ACME_LAYOUT)
    config["mlModelConfig"]["script"] = "slow_train.py"
    service.register_organization("acme-corp", config, actor="test")
    yield Stack(env, service)
    service.close()


@pytest.fixture
def worker(stack: Stack, tmp_path: Path) -> Iterator[Worker]:
    with celery_worker(stack.env, tmp_path) as running:
        yield running


@pytest.fixture
def client(stack: Stack) -> Iterator[TrainingClient]:
    broker_url, results_url = broker_url_of(stack.env), stack.env["REDIS_URL"]
    with TrainingClient(broker_url, result_url=results_url) as training_client:
        yield training_client


@on_both_brokers
def test_a_client_follows_a_run_until_it_has_finished(stack, worker, client) -> None:
    queued = client.submit({"organizationId": "acme-corp", "dataRange": RANGE}).get(timeout=60)
    run_id = queued["runId"]
    first = client.status(run_id, timeout_s=STATUS_TIMEOUT_S)
    assert (first["runId"], first["version"]) == (run_id, queued["version"])
    assert first["status"] in ("queued", "running") and first["finished"] is False

    # The script sleeps 3 s before it trains: a shorter bound passes while the run is active.
    with pytest.raises(TimeoutError) as early:
        client.wait(run_id, timeout_s=1.0, poll_interval_s=0.2)
    assert isinstance(early.value, RunTimeoutError) and early.value.run_id == run_id
    last = early.value.last_status
    assert last is not None and last["status"] in ("queued", "running")
    assert f"run {run_id} of acme-corp is still {last['status']}" in str(early.value)
    assert "longer timeout_s" in str(early.value)

    seen: list[dict[str, Any]] = []
    final = client.wait(
        run_id, timeout_s=RUN_TIMEOUT_S, poll_interval_s=0.5, on_progress=seen.append
    )
    assert final["status"] == "succeeded", final["error"] or worker.log_tail()
    assert final["finished"] is True and final["stagesDone"] == 4 and final["error"] is None
    assert seen[-1] == final
    assert all(a != b for a, b in pairwise(seen)), "only changes are reported"
    assert {"running"} <= {doc["status"] for doc in seen}, "progress was reported on the way"
    assert "train" in {doc["stage"] for doc in seen}
    queued_at, finished_at = (
        datetime.fromisoformat(final[key].replace("Z", "+00:00"))
        for key in ("queuedAt", "finishedAt")
    )
    assert timedelta(0) < finished_at - queued_at < timedelta(seconds=RUN_TIMEOUT_S)
    assert final == client.status(run_id), "a finished run reads the same afterwards"


@on_both_brokers
def test_the_status_of_an_unknown_or_malformed_run_id_names_it(stack, worker, client) -> None:
    unknown = "f" * 32
    with pytest.raises(RunNotFoundError) as missing:
        client.status(unknown, timeout_s=STATUS_TIMEOUT_S)
    assert f"training run {unknown} does not exist" in str(missing.value)
    assert missing.value.kind == "NotFoundError"

    with pytest.raises(InvalidRequestError) as malformed:
        client.status("acme-corp-latest", timeout_s=STATUS_TIMEOUT_S)
    assert str(malformed.value).startswith("runId: 'acme-corp-latest' is not a run id")


def test_polling_the_status_leaves_no_results_behind_in_redis(stack, worker, client) -> None:
    results = redis_lib.Redis.from_url(stack.env["REDIS_URL"])
    before = set(results.scan_iter("celery-task-meta-*"))
    for _ in range(3):
        with pytest.raises(RunNotFoundError):
            client.status("e" * 32, timeout_s=STATUS_TIMEOUT_S)
    assert set(results.scan_iter("celery-task-meta-*")) == before
