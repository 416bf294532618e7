"""No run stays stuck and no stage ends the worker: a lost stage message, a cancel in every
state, a stage that will not stop, a stage that runs out of memory.

Each fault is made from outside against a real worker, Redis and PostgreSQL: the broker loses a
message (its queue key deleted, as when Redis loses data), a stage blocks in a read that never
returns, a run waits between two stages, the pool process gets too little address space for what
a script left behind. Each test ends with the run finished (succeeded once, cancelled or failed)
within a bound, the worker process still running, and the organization free to train.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psutil
import pytest
import redis

from tests.support.chaos import RANGE, RUN_TIMEOUT_S, Chaos
from tests.support.processes import broker_url_of, celery_worker, on_both_brokers, wait_for
from training_tasks.demo import scada
from training_tasks.protocol.ids import org_queue

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

STALL_S = 3.0


@pytest.fixture
def stalls(chaos: Chaos) -> Chaos:
    """The chaos service with a short stall bound, so a lost message is resent within seconds."""
    chaos.env.update(RUN_STALL_S=str(STALL_S), REAPER_INTERVAL_S="0.5")
    return chaos


def lose_queued_messages(service: Chaos, org_id: str) -> int:
    """Delete the organization's queue from Redis (purge it on RabbitMQ), as a broker that lost
    its data; returns how many messages were in it."""
    if "BROKER_URL" in service.env:
        from kombu import Connection

        with Connection(broker_url_of(service.env)) as connection:
            return int(connection.default_channel.queue_purge(org_queue(org_id)) or 0)
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    try:
        keys = [k for k in client.keys(f"{org_queue(org_id)}*") if b"unacked" not in k]
        lost = sum(client.llen(k) for k in keys)
        if keys:
            client.delete(*keys)
        return int(lost)
    finally:
        client.close()


def queued_messages(service: Chaos, org_id: str) -> int:
    client = redis.Redis.from_url(service.env["REDIS_URL"])
    try:
        return int(sum(client.llen(k) for k in client.keys(f"{org_queue(org_id)}*")))
    finally:
        client.close()


@on_both_brokers  # the reaper asks the broker whether the stage's message still waits
def test_a_lost_extract_message_is_sent_again_and_the_run_succeeds(stalls: Chaos) -> None:
    stalls.register("acme-corp", scada.ACME_LAYOUT)
    handle = stalls.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
    assert lose_queued_messages(stalls, "acme-corp") == 1
    with celery_worker(stalls.env, stalls.tmp) as worker:
        result = handle.wait(timeout_s=RUN_TIMEOUT_S)
    assert result["status"] == "succeeded", result["error"] or worker.log_tail()
    run = stalls.run(handle.run_id)
    [stalled] = run["attempts"]
    assert (run["attempt"], stalled["kind"], stalled["stage"]) == (2, "stalled", "extract")
    assert stalls.versions("acme-corp") == [result["version"]]


def paused_between_train_and_validate(service: Chaos, worker: Any, run_id: str) -> None:
    """Stop the worker's main process while training, so the validate message stays queued."""
    service.wait_stage(run_id, "train")
    os.kill(worker.proc.pid, signal.SIGSTOP)
    wait_for(lambda: service.run(run_id)["stages_done"] == 2, 90, "the training to end")
    wait_for(lambda: queued_messages(service, "acme-corp") == 1, 10, "the validate message")


def test_a_validate_message_lost_between_stages_is_sent_again(stalls: Chaos) -> None:
    stalls.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    stalls.delay(3)
    with celery_worker(stalls.env, stalls.tmp) as worker:
        handle = stalls.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        try:
            paused_between_train_and_validate(stalls, worker, handle.run_id)
            assert lose_queued_messages(stalls, "acme-corp") == 1
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)
        result = handle.wait(timeout_s=RUN_TIMEOUT_S)
        assert worker.proc.poll() is None
    assert result["status"] == "succeeded", result["error"] or worker.log_tail()
    run = stalls.run(handle.run_id)
    [stalled] = run["attempts"]
    assert (run["attempt"], stalled["kind"], stalled["stage"]) == (2, "stalled", "validate")
    assert "sent the stage again" in worker.log_tail(400)
    assert stalls.versions("acme-corp") == [result["version"]]
    assert stalls.service.get_organization("acme-corp")["deployedVersion"] == result["version"]


def test_a_run_waiting_between_stages_is_cancelled_at_once(stalls: Chaos) -> None:
    stalls.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    stalls.delay(3)
    with celery_worker(stalls.env, stalls.tmp) as worker:
        handle = stalls.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        try:
            paused_between_train_and_validate(stalls, worker, handle.run_id)
            lose_queued_messages(stalls, "acme-corp")
            started = time.monotonic()
            answer = stalls.service.cancel_training("acme-corp", actor="ops")
            took_s = time.monotonic() - started
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)
        assert (answer["status"], stalls.run(handle.run_id)["status"]) == ("cancelled", "cancelled")
        assert took_s < 2
        stalls.delay(0)
        again = stalls.service.train_model(
            "acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S
        )
    assert again["status"] == "succeeded", again["error"] or worker.log_tail()
    assert stalls.service.get_organization("acme-corp")["deployedVersion"] == again["version"]
    assert stalls.run(handle.run_id)["stages_done"] == 2  # the cancelled run went no further


def test_cancel_ends_a_stage_blocked_in_a_read_and_frees_the_worker_slot(chaos: Chaos) -> None:
    chaos.register("acme-corp", scada.ACME_LAYOUT)
    chaos.register("globex", scada.GLOBEX_LAYOUT)
    chaos.proxy.delay_s = 0.05  # a slow SCADA answer, so the extract is caught in the middle
    with celery_worker(chaos.env, chaos.tmp, concurrency=1) as worker:
        handle = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        chaos.wait_stage(handle.run_id, "extract")
        chaos.proxy.delay_s = 3600.0  # ... and then no answer at all: the read never returns
        time.sleep(1.0)
        started = time.monotonic()
        answer = chaos.service.cancel_training("acme-corp", actor="ops", wait_s=30)
        took_s = time.monotonic() - started
        chaos.proxy.delay_s = 0.0
        assert answer["status"] == "cancelled", worker.log_tail()
        assert took_s < 15
        # The only worker slot was freed: another organization trains on the same worker.
        other = chaos.service.train_model("globex", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
        assert other["status"] == "succeeded", other["error"] or worker.log_tail()
        assert worker.proc.poll() is None
        log = worker.log_tail(400)
    assert "did not stop within" in log and "Unrecoverable error" not in log
    run = chaos.run(handle.run_id)
    assert run["status"] == "cancelled" and "cancelled by ops" in run["error"]
    assert chaos.versions("acme-corp") == []
    again = chaos.service.cancel_training
    with pytest.raises(Exception, match="no queued or running run"):
        again("acme-corp", actor="ops")


# Writes a sparse 900 MB model.onnx: the worker reads a model whole to store it.
HUGE_MODEL_SCRIPT = """
import json, pathlib, sys, time
time.sleep(3)
out = pathlib.Path(json.loads(pathlib.Path(sys.argv[1]).read_text())["outputPath"])
with open(out / "model.onnx", "wb") as fh:
    fh.truncate(900 * 2**20)
metrics = {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "auc": 1.0}
(out / "metrics.json").write_text(json.dumps(metrics))
"""


def test_a_stage_out_of_memory_fails_its_run_and_the_worker_trains_on(chaos: Chaos) -> None:
    (chaos.base / "scripts" / "huge_model.py").write_text(HUGE_MODEL_SCRIPT)
    chaos.register("acme-corp", scada.ACME_LAYOUT, script="huge_model.py")
    chaos.register("globex", scada.GLOBEX_LAYOUT)
    with celery_worker(chaos.env, chaos.tmp, concurrency=1) as worker:
        [child] = psutil.Process(worker.proc.pid).children()
        soft, hard = child.rlimit(psutil.RLIMIT_AS)
        handle = chaos.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        chaos.training_process("huge_model.py", timeout_s=60)  # the stage is past its own imports
        # Room for the stage's own work, not for a 900 MB model: the read raises MemoryError.
        child.rlimit(psutil.RLIMIT_AS, (child.memory_info().vms + 400 * 2**20, hard))
        bad = handle.wait(timeout_s=RUN_TIMEOUT_S)
        assert bad["status"] == "failed", bad
        assert "the worker ran out of memory during train" in bad["error"]
        assert "the worker goes on" in bad["error"]
        child.rlimit(psutil.RLIMIT_AS, (soft, hard))
        good = chaos.service.train_model("globex", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
        assert good["status"] == "succeeded", good["error"] or worker.log_tail()
        assert worker.proc.poll() is None and child.is_running()  # the same pool process too
        log = worker.log_tail(400)
    assert "Unrecoverable error" not in log and "Process got" not in log
    assert chaos.versions("acme-corp") == []
