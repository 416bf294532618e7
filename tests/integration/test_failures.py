"""Breaking things on purpose: killed workers and training processes, a visibility timeout
shorter than training, Redis and the SCADA database going away, cancels, a segfaulting script.

Every test ends with one run record per request, the right final status, no process left
behind, no duplicate version, and (where the run failed) the previous model still deployed and
the alert delivered to a local webhook.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.support.chaos import RANGE, RUN_TIMEOUT_S, Chaos
from tests.support.local_servers import RedisServer, TcpProxy
from tests.support.processes import Worker, celery_worker, on_both_brokers, wait_for, worker_pid
from training_tasks.config.settings import BUNDLED_SCRIPT, Settings
from training_tasks.demo import scada
from training_tasks.runtime import build_runtime
from training_tasks.service.api import FINISHED, TrainingService

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

REDIS_DOWN_S = 3.0
# Waits (up to a minute) for the file `go` next to it, then trains as the bundled script.
GATED_SCRIPT = f"""
import pathlib, runpy, sys, time
gate = pathlib.Path(__file__).parent / "go"
deadline = time.monotonic() + 60
while not gate.exists() and time.monotonic() < deadline:
    time.sleep(0.1)
sys.argv[0] = {str(BUNDLED_SCRIPT)!r}
runpy.run_path({str(BUNDLED_SCRIPT)!r}, run_name="__main__")
"""


@on_both_brokers  # on RabbitMQ the stage's message was acknowledged: the lease recovers it
def test_a_worker_killed_mid_training_is_recovered_and_the_run_succeeds_once(chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    chaos.delay(30)
    handle = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
    with celery_worker(chaos.env, chaos.tmp) as doomed:
        chaos.wait_stage(handle.run_id, "train")
        trainer = chaos.training_process()
        os.killpg(doomed.proc.pid, signal.SIGKILL)  # the worker and its pool, like the OOM killer
        doomed.proc.wait(timeout=10)
        trainer.wait(timeout=10)  # the training process dies with its worker
    chaos.delay(0)
    with celery_worker(chaos.env, chaos.tmp) as rescuer:
        result = handle.wait(timeout_s=RUN_TIMEOUT_S)
    assert result["status"] == "succeeded", result["error"] or rescuer.log_tail()
    run = chaos.run(handle.run_id)
    assert run["attempt"] == 2
    [lost] = run["attempts"]
    assert (lost["kind"], lost["stage"]) == ("worker_lost", "train")
    assert chaos.versions("acme-corp") == [result["version"]]
    assert chaos.service.get_organization("acme-corp")["deploySequence"] == 1


@on_both_brokers  # the retry is a countdown: on quorum queues the worker holds it until due
def test_killing_only_the_training_process_retries_the_training(chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    chaos.delay(30)
    with celery_worker(chaos.env, chaos.tmp) as worker:
        handle = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        trainer = chaos.training_process()
        chaos.delay(0)
        trainer.kill()
        result = handle.wait(timeout_s=RUN_TIMEOUT_S)
    assert result["status"] == "succeeded", result["error"] or worker.log_tail()
    run = chaos.run(handle.run_id)
    [retried] = run["attempts"]
    assert run["attempt"] == 2 and retried["kind"] == "retry" and "SIGKILL" in retried["error"]
    assert chaos.versions("acme-corp") == [result["version"]]


def test_training_longer_than_the_visibility_timeout_runs_once(chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    chaos.delay(10)
    env = {**chaos.env, "BROKER_VISIBILITY_TIMEOUT_S": "2"}
    with celery_worker(env, chaos.tmp) as first, celery_worker(env, chaos.tmp) as second:
        handle = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        result = handle.wait(timeout_s=RUN_TIMEOUT_S)
        logs = first.log_tail(400) + second.log_tail(400)
    assert result["status"] == "succeeded", result["error"] or logs
    assert chaos.run(handle.run_id)["attempt"] == 1
    assert chaos.versions("acme-corp") == [result["version"]]
    assert chaos.service.get_organization("acme-corp")["deploySequence"] == 1
    assert logs.count("train started") == 1


@dataclass
class OwnRedis:
    """A Redis server of the test's own (to stop and start), and a service that uses it."""

    server: RedisServer
    env: dict[str, str]
    service: TrainingService

    def restart(self, down_s: float = REDIS_DOWN_S) -> None:
        """Stop Redis, keep it down for `down_s`, start it again on its port with its data."""
        self.server.stop()
        time.sleep(down_s)
        self.server.start()

    def drop_connections(self) -> int:
        """Close every client connection from the server side, as a proxy or failover would."""
        import redis

        client = redis.Redis.from_url(self.server.url)
        try:
            return int(client.client_kill_filter(_type="normal", skipme=True))
        finally:
            client.close()

    def train(self, **options: Any) -> Any:
        return self.service.train_model("acme-corp", {"dataRange": RANGE}, **options)

    def finish(self, handle: Any, worker: Worker) -> dict[str, Any]:
        """Wait for the run to end; fail at once, with the worker's log, if the worker exits."""
        wait_for(
            lambda: worker.proc.poll() is not None or handle.status()["status"] in FINISHED,
            RUN_TIMEOUT_S,
            f"run {handle.run_id} to finish",
        )
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.log_tail(200)}"
        return dict(handle.status())


@pytest.fixture
def own_redis(chaos: Chaos, tmp_path: Path) -> Iterator[OwnRedis]:
    server = RedisServer(tmp_path / "redis")
    env = {**chaos.env, "REDIS_URL": server.url}
    try:
        service = TrainingService(build_runtime(Settings.from_env(env)))
    except BaseException:
        server.stop()
        raise
    yield OwnRedis(server, env, service)
    service.close()
    server.stop()


def test_the_worker_survives_redis_restarts_during_runs_and_serves_the_next_run(
    chaos, own_redis
) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    chaos.delay(6)  # training outlasts the outage: the stage runs on while Redis is away
    results = []
    with celery_worker(own_redis.env, chaos.tmp, as_deployed=True) as worker:
        pid = worker_pid(worker, own_redis.server.url)
        for _ in range(2):
            handle = own_redis.train(wait=False)
            chaos.wait_stage(handle.run_id, "train")
            own_redis.restart()
            results.append(own_redis.finish(handle, worker))
        chaos.delay(0)
        results.append(own_redis.finish(own_redis.train(wait=False), worker))
        served_by = worker_pid(worker, own_redis.server.url)
        log = worker.log_tail(3000)
    assert [r["status"] for r in results] == ["succeeded"] * 3, [r["error"] for r in results]
    assert served_by == pid == worker.proc.pid
    assert "Unrecoverable error" not in log and log.count("Connected to") >= 3
    # Each run's stages ran once, in order: the stage cut off from Redis finished, nothing re-ran.
    assert [chaos.run(r["runId"])["attempt"] for r in results] == [1, 1, 1]
    assert log.count("train started") == 3 and log.count("deploy done") == 3
    assert sorted(chaos.versions("acme-corp")) == sorted(r["version"] for r in results)
    assert chaos.service.get_organization("acme-corp")["deploySequence"] == 3


def test_a_stage_that_ends_while_redis_is_down_hands_over_to_the_next_once_it_is_back(
    chaos, own_redis
) -> None:
    gate = chaos.base / "scripts" / "go"
    (chaos.base / "scripts" / "gated_train.py").write_text(GATED_SCRIPT)
    chaos.register("acme-corp", scada.ACME_LAYOUT, script="gated_train.py")
    with celery_worker(own_redis.env, chaos.tmp) as worker:
        pid = worker_pid(worker, own_redis.server.url)
        handle = own_redis.train(wait=False)
        chaos.wait_stage(handle.run_id, "train")
        own_redis.server.stop()
        gate.write_text("")
        wait_for(lambda: chaos.run(handle.run_id)["stages_done"] == 2, 90, "the training to end")
        time.sleep(REDIS_DOWN_S)  # the next stage's message cannot be sent yet
        own_redis.server.start()
        result = own_redis.finish(handle, worker)
        served_by = worker_pid(worker, own_redis.server.url)
        log = worker.log_tail(2000)
    assert result["status"] == "succeeded", result["error"] or log
    assert served_by == pid == worker.proc.pid
    assert chaos.run(handle.run_id)["attempt"] == 1
    assert "Unrecoverable error" not in log and log.count("train started") == 1
    assert chaos.versions("acme-corp") == [result["version"]]


def test_a_broker_connection_cut_during_training_leaves_the_worker_and_the_run_going(
    chaos, own_redis
) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    chaos.delay(4)
    with celery_worker(own_redis.env, chaos.tmp) as worker:
        pid = worker_pid(worker, own_redis.server.url)
        handle = own_redis.train(wait=False)
        chaos.wait_stage(handle.run_id, "train")
        # Redis stays up, so the worker puts the running stage's message back on the queue when
        # it reconnects; the copy it then receives must find the stage taken and do nothing.
        assert own_redis.drop_connections() > 0
        result = own_redis.finish(handle, worker)
        served_by = worker_pid(worker, own_redis.server.url)
        log = worker.log_tail(2000)
    assert result["status"] == "succeeded", result["error"] or log
    assert served_by == pid == worker.proc.pid
    assert "Unrecoverable error" not in log and log.count("train started") == 1
    assert chaos.run(handle.run_id)["attempt"] == 1
    assert chaos.versions("acme-corp") == [result["version"]]


def test_the_scada_database_going_away_during_extraction_is_retried(chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT)
    chaos.proxy.delay_s = 0.05  # a slow link, so the extract is still reading when it drops
    with celery_worker(chaos.env, chaos.tmp) as worker:
        handle = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        chaos.wait_stage(handle.run_id, "extract")
        chaos.proxy.down()
        wait_for(lambda: chaos.run(handle.run_id)["attempt"] == 2, 30, "the extract to fail")
        chaos.proxy.delay_s = 0.0
        chaos.proxy.up()
        result = handle.wait(timeout_s=RUN_TIMEOUT_S)
    assert result["status"] == "succeeded", result["error"] or worker.log_tail()
    [failed] = chaos.run(handle.run_id)["attempts"]
    assert (failed["stage"], failed["kind"]) == ("extract", "retry")
    assert "SCADA" in failed["error"]
    assert chaos.versions("acme-corp") == [result["version"]]


def test_the_service_database_going_away_during_extraction_loses_nothing(chaos) -> None:
    service_db = make_url(chaos.env["DATABASE_URL"])
    db_proxy = TcpProxy((service_db.host or "127.0.0.1", service_db.port or 5432))
    proxied = service_db.set(port=db_proxy.port).render_as_string(hide_password=False)
    env = {**chaos.env, "DATABASE_URL": proxied}
    chaos.register("acme-corp", scada.ACME_LAYOUT)
    chaos.proxy.delay_s = 0.05  # the extract reads slowly enough to be cut in the middle
    try:
        with celery_worker(env, chaos.tmp) as worker:
            handle = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
            chaos.wait_stage(handle.run_id, "extract")
            db_proxy.down()
            time.sleep(4)  # longer than the lease: the worker can neither renew nor record
            db_proxy.up()
            chaos.proxy.delay_s = 0.0
            result = handle.wait(timeout_s=RUN_TIMEOUT_S)
    finally:
        db_proxy.down()
    assert result["status"] == "succeeded", result["error"] or worker.log_tail(200)
    assert chaos.versions("acme-corp") == [result["version"]]
    assert len(chaos.service.get_training_history("acme-corp")) == 1
    assert chaos.service.get_organization("acme-corp")["deploySequence"] == 1


def test_cancel_during_training_stops_it_within_seconds_and_spares_other_orgs(chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    chaos.register("globex", scada.GLOBEX_LAYOUT)
    chaos.delay(60)
    with celery_worker(chaos.env, chaos.tmp, concurrency=2) as worker:
        doomed = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        trainer = chaos.training_process()
        spared = chaos.service.train_model("globex", {"dataRange": RANGE}, wait=False)
        chaos.wait_stage(spared.run_id, "train")
        started = time.monotonic()
        cancelled = chaos.service.cancel_training("acme-corp", actor="test", wait_s=15)
        elapsed_s = time.monotonic() - started
        other = spared.wait(timeout_s=RUN_TIMEOUT_S)
    assert cancelled["status"] == "cancelled" and elapsed_s < 5, worker.log_tail()
    assert not trainer.is_running()
    run = chaos.run(doomed.run_id)
    assert run["status"] == "cancelled" and "cancelled by test" in run["error"]
    assert chaos.versions("acme-corp") == []
    assert chaos.service.get_organization("acme-corp")["deployedVersion"] is None
    assert other["status"] == "succeeded", other["error"]
    assert chaos.webhook.requests == []  # a cancel is not an alert


def test_cancel_during_extraction_stops_the_extract(chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT)
    chaos.proxy.delay_s = 0.05
    with celery_worker(chaos.env, chaos.tmp) as worker:
        handle = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        chaos.wait_stage(handle.run_id, "extract")
        cancelled = chaos.service.cancel_training("acme-corp", actor="test", wait_s=20)
    assert cancelled["status"] == "cancelled", worker.log_tail()
    run = chaos.run(handle.run_id)
    assert run["status"] == "cancelled" and run["stages_done"] == 0
    assert chaos.versions("acme-corp") == []


def test_a_cancel_made_while_the_worker_is_down_holds_when_workers_come_back(chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    chaos.delay(30)
    handle = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
    with celery_worker(chaos.env, chaos.tmp) as doomed:
        chaos.wait_stage(handle.run_id, "train")
        trainer = chaos.training_process()
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(timeout=10)
        trainer.wait(timeout=10)
    asked = chaos.service.cancel_training("acme-corp", actor="ops")
    assert asked["status"] == "cancelling"  # stored: no worker is there to be told
    chaos.delay(0)
    with celery_worker(chaos.env, chaos.tmp) as worker:
        wait_for(lambda: chaos.run(handle.run_id)["status"] == "cancelled", 30, "the cancel")
        time.sleep(2)  # a resent stage would show up in the log by now
        log = worker.log_tail(300)
    assert "train started" not in log
    assert chaos.versions("acme-corp") == []


@on_both_brokers  # a worker started with a message waiting in an organization's queue
def test_a_queued_run_is_cancelled_at_once_and_its_message_does_nothing(chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT)
    handle = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
    assert chaos.service.cancel_training("acme-corp")["status"] == "cancelled"
    with celery_worker(chaos.env, chaos.tmp) as worker:
        wait_for(lambda: "delivered again" in worker.log_tail(200), 30, "the message to be seen")
    assert chaos.run(handle.run_id)["status"] == "cancelled"
    assert chaos.versions("acme-corp") == []
    events = [e["event"] for e in chaos.service.get_audit_trail("acme-corp")]
    assert events[:2] == ["training.cancelled", "training.cancel_requested"]


def test_a_script_that_always_segfaults_fails_after_three_attempts_and_alerts(chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT)
    with celery_worker(chaos.env, chaos.tmp) as worker:
        good = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
        assert good["status"] == "succeeded", good["error"] or worker.log_tail()
        chaos.use_script("acme-corp", scada.ACME_LAYOUT, "segfault.py")
        bad = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
        wait_for(lambda: chaos.webhook.requests, 20, "the alert")
    assert bad["status"] == "failed" and "SIGSEGV" in bad["error"]
    run = chaos.run(bad["runId"])
    kinds = [a["kind"] for a in run["attempts"]]
    assert run["attempt"] == 3 and kinds == ["retry", "retry", "failed"]
    assert chaos.service.get_organization("acme-corp")["deployedVersion"] == good["version"]
    assert chaos.versions("acme-corp") == [good["version"]]
    [alert] = chaos.webhook.bodies()
    assert (alert["event"], alert["organizationId"], alert["runId"], alert["stage"]) == (
        "run.failed",
        "acme-corp",
        bad["runId"],
        "train",
    )
    assert "SIGSEGV" in alert["reason"] and alert["attempt"] == 3
    assert json.loads(json.dumps(alert))["version"] == bad["version"]
