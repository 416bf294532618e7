"""Dashboards and metrics: Flower on the project's app, and `trainctl metrics`, against real runs.

A real worker and a real `celery -A training_tasks flower` on a free loopback port, a SCADA
table in PostgreSQL and an organization registered as in test_pipeline.py. What an operator
checks: `training.submit` called through Flower's HTTP API trains a model; Flower lists the
chain's tasks by name with their arguments and never a secret a client put into a request; both
`/metrics` endpoints serve Prometheus text about our tasks and runs.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import (
    Flower,
    Worker,
    celery_worker,
    flower_process,
    free_port,
    on_both_brokers,
    service_env,
    stop_group,
    wait_for,
)
from training_tasks.config.settings import Settings
from training_tasks.demo import scada
from training_tasks.demo.child_process import die_with_parent
from training_tasks.registry import runs
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.postgres]

START = datetime(2026, 1, 1, tzinfo=UTC)
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-15T00:00:00Z"}
RUN_TIMEOUT_S = 60.0
EVENTS_TIMEOUT_S = 15.0
SECRET = "hunter2"
LEAKY_REQUEST = {
    "organizationId": "acme-corp",
    "dataRange": RANGE,
    # A client copied the organization's connection into its request: refused (unknown key),
    # but the message carries it, so Flower and the logs must not show it.
    "scadaDbConfig": {"url": f"postgresql://scada:{SECRET}@db.plant:5432/plant"},
}
STAGES = ("training.extract", "training.train", "training.validate", "training.deploy")
# How Flower lists the chain of a run of acme-corp: each stage with its organization.
SHOWN_CHAIN = ("training.submit", *(f"{stage}[acme-corp]" for stage in STAGES))
FINISHED = ("succeeded", "validated", "rejected", "failed", "cancelled")


@dataclass
class Stack:
    env: dict[str, str]
    base: Path
    service: TrainingService
    scada_url: str
    tmp: Path

    def register(self, org_id: str = "acme-corp", **model: object) -> None:
        doc = scada.demo_org_config(org_id, self.scada_url, scada.ACME_LAYOUT)
        doc["mlModelConfig"].update(model)
        self.service.register_organization(org_id, doc, actor="test")

    def run_row(self, run_id: str) -> dict[str, Any]:
        return dict(runs.get_run(self.service.rt.engine, run_id))

    def wait_finished(self, run_id: str) -> dict[str, Any]:
        return wait_for(
            lambda: (row := self.run_row(run_id))["status"] in FINISHED and row,
            RUN_TIMEOUT_S,
            f"run {run_id} to finish",
        )


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, broker: str, postgres_factory: Any) -> Iterator[Stack]:
    service_db, scada_db = postgres_factory(), postgres_factory()
    frames = scada.iter_sensor_frames(assets=6, days=45, interval_min=10, seed=7, start=START)
    scada.write_scada_postgres(scada_db, frames, scada.ACME_LAYOUT)
    base = tmp_path / "ml"
    env = service_env(
        redis_url=redis_url, database_url=service_db, ml_base_path=base, broker_url=broker
    )
    service = TrainingService(build_runtime(Settings.from_env(env)))
    yield Stack(env, base, service, scada_db, tmp_path)
    service.close()


@pytest.fixture
def worker(stack: Stack) -> Iterator[Worker]:
    with celery_worker(stack.env, stack.tmp) as running:
        yield running


@pytest.fixture
def flower(stack: Stack, worker: Worker) -> Iterator[Flower]:
    with flower_process(stack.env, stack.tmp) as running:
        yield running


def http(url: str, doc: Any = None, *, login: str | None = None) -> Any:
    """GET (or POST `doc` as JSON) and decode the JSON reply; text when it is not JSON."""
    data = None if doc is None else json.dumps(doc).encode()
    headers = {"Content-Type": "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as reply:
        body = reply.read().decode()
    try:
        return json.loads(body)
    except ValueError:
        return body


def submit_through_flower(flower: Flower, request: dict[str, Any], **options: Any) -> str:
    reply = http(
        f"{flower.url}/api/task/async-apply/training.submit", {"args": [request], **options}
    )
    return str(reply["task-id"])


def submitted_run(flower: Flower, task_id: str) -> dict[str, Any]:
    reply = wait_for(
        lambda: (r := http(f"{flower.url}/api/task/result/{task_id}"))["state"] == "SUCCESS" and r,
        30,
        "training.submit to succeed",
    )
    return dict(reply["result"])


def flower_tasks(flower: Flower, **query: str) -> dict[str, dict[str, Any]]:
    params = "&".join(f"{k}={v}" for k, v in query.items())
    return dict(http(f"{flower.url}/api/tasks?{params}"))


def samples(text: str, name: str) -> list[Any]:
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


@on_both_brokers  # tasks, workers and metrics come from events; the broker tab is Redis only
def test_training_submit_through_flowers_api_trains_and_flower_lists_the_chain(
    stack: Stack, worker: Worker, flower: Flower
) -> None:
    stack.register()
    task_id = submit_through_flower(flower, {"organizationId": "acme-corp", "dataRange": RANGE})
    queued = submitted_run(flower, task_id)
    run = stack.wait_finished(queued["runId"])
    assert run["status"] == "succeeded", run["error"] or worker.log_tail()

    def chain_seen() -> dict[str, dict[str, Any]] | None:
        shown = {t["name"]: t for t in flower_tasks(flower).values()}
        done = all(shown.get(n, {}).get("state") == "SUCCESS" for n in SHOWN_CHAIN)
        # Each stage is listed under its display name, which names the organization.
        return {n.split("[")[0]: shown[n] for n in SHOWN_CHAIN} if done else None

    shown = wait_for(chain_seen, EVENTS_TIMEOUT_S, "Flower to show the whole chain succeeded")
    assert "'organizationId': 'acme-corp'" in shown["training.submit"]["args"]
    assert queued["runId"] in shown["training.submit"]["result"]
    for stage in STAGES:
        assert shown[stage]["args"] == repr([queued["runId"]]), stage
        assert shown[stage]["routing_key"] == "org.acme-corp"

    metrics = http(f"{flower.url}/metrics")
    events = samples(metrics, "flower_events_total")
    for name in SHOWN_CHAIN:
        mine = [s for s in events if s.labels["task"] == name]
        assert any(s.labels["type"] == "task-succeeded" and s.value >= 1 for s in mine), name
    online = samples(metrics, "flower_worker_online")
    assert any(s.labels["worker"] == worker.name and s.value == 1 for s in online)
    runtimes = samples(metrics, "flower_task_runtime_seconds_count")
    assert any(s.labels["task"] == "training.train[acme-corp]" for s in runtimes)


def test_flowers_api_needs_the_login_given_to_flower_and_its_metrics_do_not(stack: Stack) -> None:
    env = {**stack.env, "FLOWER_BASIC_AUTH": "ops:s3cret-login"}
    with flower_process(env, stack.tmp, unauthenticated_api=False) as guarded:
        apply = f"{guarded.url}/api/task/async-apply/training.submit"
        with pytest.raises(urllib.error.HTTPError) as refused:
            http(apply, {"args": [{"organizationId": "acme-corp"}]})
        assert refused.value.code == 401
        sent = http(apply, {"args": [{"organizationId": "acme-corp"}]}, login="ops:s3cret-login")
        assert sent["state"] == "PENDING" and sent["task-id"]
        assert "flower_events_total" in http(f"{guarded.url}/metrics")


def test_flowers_broker_tab_and_queue_lengths_show_requests_waiting_for_a_worker(
    stack: Stack,
) -> None:
    # No worker: the requests stay in training.requests. With a login, as compose runs Flower.
    login = "ops:s3cret-login"
    env = {**stack.env, "FLOWER_BASIC_AUTH": login}
    with flower_process(env, stack.tmp, unauthenticated_api=False) as flower:
        for _ in range(3):
            submit = f"{flower.url}/api/task/async-apply/training.submit"
            http(submit, {"args": [{"organizationId": "acme-corp"}]}, login=login)
        lengths = http(f"{flower.url}/api/queues/length", login=login)
        assert {"name": "training.requests", "messages": 3} in lengths["active_queues"]
        page = http(f"{flower.url}/broker", login=login)
        assert "training.requests" in page and "not supported" not in page
        assert "redis://" in page  # the broker, named by its scheme
    assert "Unable to get queues" not in flower.log_tail(10_000)


FOREIGN_CLIENT = """
import json, os, sys
from celery import Celery
app = Celery(broker=os.environ["REDIS_URL"])
result = app.send_task("training.submit", args=[json.loads(sys.argv[1])], queue="training.requests")
print(result.id)
"""


def test_a_secret_in_a_request_never_shows_in_flower_or_the_logs(
    stack: Stack, worker: Worker, flower: Flower
) -> None:
    stack.register()
    through_flower = submit_through_flower(flower, LEAKY_REQUEST)
    # Nobody consumes this queue: Flower knows the task only from its task-sent event.
    waiting = submit_through_flower(flower, LEAKY_REQUEST, queue="flower-test.nobody-listens")
    # Another service's bare Celery app (python -I: it cannot import this project).
    foreign = subprocess.run(
        [sys.executable, "-I", "-c", FOREIGN_CLIENT, json.dumps(LEAKY_REQUEST)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()

    def all_shown() -> dict[str, dict[str, Any]] | None:
        tasks = flower_tasks(flower, taskname="training.submit")
        states = {i: tasks.get(i, {}).get("state") for i in (through_flower, waiting, foreign)}
        ok = states[through_flower] == states[foreign] == "FAILURE" and states[waiting]
        return tasks if ok else None

    tasks = wait_for(all_shown, EVENTS_TIMEOUT_S, "Flower to show the three requests")
    for task_id in (through_flower, waiting, foreign):
        args = tasks[task_id]["args"]
        assert "postgresql://scada:***@db.plant:5432/plant" in args, args
        assert "'organizationId': 'acme-corp'" in args
    assert "scadaDbConfig" in tasks[through_flower]["exception"]
    shown = json.dumps(flower_tasks(flower)) + json.dumps(
        http(f"{flower.url}/api/task/info/{foreign}")
    )
    assert SECRET not in shown
    assert SECRET not in worker.log_tail(10_000)
    assert SECRET not in flower.log_tail(10_000)
    assert stack.service.get_training_history("acme-corp") == []


def test_trainctl_metrics_serves_runs_and_deployments_on_a_loopback_port(
    stack: Stack, worker: Worker
) -> None:
    stack.register()
    done = stack.service.train_model("acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
    assert isinstance(done, dict)  # with a timeout, the run's result
    assert done["status"] == "succeeded", done["error"] or worker.log_tail()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "training_tasks.cli", "metrics", "--port", str(port)],
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        text = wait_for(lambda: _scrape(url), 30, f"trainctl metrics to answer on {url}")
    finally:
        stop_group(proc)
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {
        "training_runs",
        "training_runs_active",
        "model_deployments",
        "schedule_slots",
        "training_run_seconds",
    } <= families
    org = {"organization": "acme-corp"}
    [succeeded] = [s for s in samples(text, "training_runs") if s.labels["status"] == "succeeded"]
    assert succeeded.labels == {**org, "status": "succeeded"} and succeeded.value == 1
    [deployed] = samples(text, "model_deployments_total")
    assert deployed.labels == {**org, "event": "deployed"} and deployed.value == 1
    [count] = samples(text, "training_run_seconds_count")
    [total_s] = samples(text, "training_run_seconds_sum")
    assert count.value == 1 and 0 < total_s.value < RUN_TIMEOUT_S
    assert samples(text, "training_runs_active")[0].value == 0
    [info] = samples(text, "model_deployed_info")
    assert info.labels == {**org, "version": done["version"]} and info.value == 1
    scores = {n: samples(text, f"model_deployed_holdout_{n}")[0] for n in ("precision", "recall")}
    assert all(0.7 <= s.value <= 1.0 for s in scores.values()), scores  # the gates are 0.70
    [auc] = samples(text, "model_deployed_holdout_auc")
    assert auc.labels == org and 0.5 < auc.value <= 1.0
    [last] = samples(text, "training_last_success_timestamp_seconds")
    assert abs(last.value - time.time()) < RUN_TIMEOUT_S + 30


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return str(reply.read().decode())
    except OSError:
        return None


TRAIN_THEN_WAIT = """
import runpy, sys, time
sys.argv[0] = {bundled!r}
try:
    runpy.run_path({bundled!r}, run_name="__main__")
finally:
    time.sleep({delay_s})  # the train stage stays running, its last progress reported
"""


def test_flower_shows_the_train_stage_in_progress_with_its_iteration(
    stack: Stack, worker: Worker, flower: Flower
) -> None:
    from training_tasks.config.settings import BUNDLED_SCRIPT

    scripts = stack.base / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    script = TRAIN_THEN_WAIT.format(bundled=str(BUNDLED_SCRIPT), delay_s=3)
    (scripts / "train_then_wait.py").write_text(script)
    stack.register(script="train_then_wait.py")
    request = {"organizationId": "acme-corp", "dataRange": RANGE}
    queued = submitted_run(flower, submit_through_flower(flower, request))

    def progress_or_finished() -> dict[str, Any] | str | None:
        for task in flower_tasks(flower, taskname="training.train[acme-corp]").values():
            shown = (
                json.loads(task["result"]) if task["state"] == "PROGRESS" and task["result"] else {}
            )
            if shown.get("iteration") is not None:
                return dict(task)  # a boosting iteration, while the stage runs
        return "finished" if stack.run_row(queued["runId"])["status"] in FINISHED else None

    seen = wait_for(progress_or_finished, RUN_TIMEOUT_S, "progress in Flower or the run's end")
    run = stack.wait_finished(queued["runId"])
    assert run["status"] == "succeeded", run["error"] or worker.log_tail()
    assert isinstance(seen, dict), "Flower never showed training.train in state PROGRESS"
    progress = json.loads(seen["result"])
    assert progress["runId"] == queued["runId"] and progress["stage"] == "train"
    assert 1 <= progress["iteration"] <= progress["total"] == 100
    events = samples(http(f"{flower.url}/metrics"), "flower_events_total")
    assert any(
        s.labels["task"] == "training.train[acme-corp]" and s.labels["type"] == "task-progress"
        for s in events
    )
    # Nothing stale is left behind: the finished stage is not PROGRESS in the result backend.
    assert http(f"{flower.url}/api/task/result/{seen['uuid']}")["state"] != "PROGRESS"
