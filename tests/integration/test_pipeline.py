"""The whole pipeline on real Redis, real PostgreSQL and a real worker process; the tests about
the broker (a submit through the Python client, a refusal, trainctl train --wait, the queues a
worker follows, duplicates) also with RabbitMQ as the broker (BROKER_URL) and Redis for the rest.

A SCADA table in PostgreSQL, an organization registered with the CLI, training requested by a
Celery client that sends `training.submit` by name with camelCase JSON, and a worker started as
docs/operations.md says. What a user would check: the deployed ONNX model scores unseen rows, the Redis
key and message match the database, and the CLI shows the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import redis as redis_lib

from tests.support.processes import (
    Worker,
    broker_url_of,
    celery_worker,
    messages_waiting,
    on_both_brokers,
    sender,
    service_env,
    wait_for,
)
from training_tasks.client import TrainingClient
from training_tasks.config.settings import Settings
from training_tasks.demo import scada
from training_tasks.protocol import hotswap
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 45
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-15T00:00:00Z"}
RUN_TIMEOUT_S = 180.0


@dataclass
class Stack:
    env: dict[str, str]
    base: Path
    service: TrainingService
    scada_url: str
    tmp: Path

    def trainctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "training_tasks.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"trainctl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def client(self) -> TrainingClient:
        """The Python client of another service: the broker, and Redis for the results."""
        return TrainingClient(broker_url_of(self.env), result_url=self.env["REDIS_URL"])

    def register(self, org_id: str, layout: scada.ScadaLayout, **model: object) -> None:
        doc = scada.demo_org_config(org_id, self.scada_url, layout)
        doc["mlModelConfig"].update(model)
        path = self.tmp / f"{org_id}.json"
        path.write_text(json.dumps(doc))
        self.trainctl("org", "create", org_id, "--config", str(path))

    def run_row(self, run_id: str) -> dict:
        from training_tasks.registry import runs

        return runs.get_run(self.service.rt.engine, run_id)

    def wait_finished(self, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> dict:
        finished = ("succeeded", "validated", "rejected", "failed", "cancelled")
        return wait_for(
            lambda: (row := self.run_row(run_id))["status"] in finished and row,
            timeout_s,
            f"run {run_id} to finish",
        )


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, broker: str, postgres_factory) -> Iterator[Stack]:
    service_db, scada_db = postgres_factory(), postgres_factory()
    frames = scada.iter_sensor_frames(assets=6, days=DAYS, interval_min=10, seed=7, start=START)
    scada.write_scada_postgres(scada_db, frames, scada.ACME_LAYOUT)
    frames = scada.iter_sensor_frames(assets=6, days=DAYS, interval_min=10, seed=8, start=START)
    scada.write_scada_postgres(scada_db, frames, scada.GLOBEX_LAYOUT)
    base = tmp_path / "ml"
    env = service_env(
        redis_url=redis_url, database_url=service_db, ml_base_path=base, broker_url=broker
    )
    rt = build_runtime(Settings.from_env(env))
    service = TrainingService(rt)
    yield Stack(env, base, service, scada_db, tmp_path)
    service.close()


@pytest.fixture
def worker(stack: Stack) -> Iterator[Worker]:
    with celery_worker(stack.env, stack.tmp) as running:
        yield running


@on_both_brokers
def test_a_celery_client_trains_and_deploys_a_model_that_scores_unseen_rows(stack, worker) -> None:
    stack.register("acme-corp", scada.ACME_LAYOUT)
    subscriber = redis_lib.Redis.from_url(stack.env["REDIS_URL"]).pubsub()
    subscriber.subscribe(hotswap.channel("acme-corp"))
    client = stack.client()
    queued = client.submit({"organizationId": "acme-corp", "dataRange": RANGE}).get(timeout=60)
    assert queued["queue"] == "org.acme-corp"

    run = stack.wait_finished(queued["runId"])
    assert run["status"] == "succeeded", run["error"] or worker.log_tail()
    model_path = stack.base / "models/acme-corp" / f"deployed_{queued['version']}" / "model.onnx"
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    unseen = scada.generate_sensor_frame(assets=2, days=3, interval_min=10, seed=99, start=START)
    rows = unseen[list(scada.FEATURES)].to_numpy(np.float32)
    probabilities, alarms = session.run(None, {"input": rows})
    assert probabilities.shape == (len(rows),) and np.all(
        (probabilities >= 0) & (probabilities <= 1)
    )
    # The model's own decision, at the threshold its metadata records (0.5 by default).
    threshold = float(session.get_modelmeta().custom_metadata_map["decision_threshold"])
    assert np.array_equal(alarms, probabilities >= np.float32(threshold))

    org = stack.service.get_organization("acme-corp")
    stored = hotswap.read_current(redis_lib.Redis.from_url(stack.env["REDIS_URL"]), "acme-corp")
    assert (stored.version, stored.sequence, stored.modelPath) == (
        org["deployedVersion"],
        org["deploySequence"],
        str(model_path),
    )

    def own_message() -> tuple[str | None, hotswap.Deployment] | None:
        # Channels are shared by every Redis database: another test session's acme-corp too.
        message = subscriber.get_message(ignore_subscribe_messages=True, timeout=0.2)
        parsed = hotswap.parse(message["data"]) if message else None
        return parsed if parsed and str(stack.base) in parsed[1].modelPath else None

    event, announced = wait_for(own_message, 10, "the hot-swap message")
    assert event == "deployed" and announced == stored
    history = stack.trainctl("history", "acme-corp", "--json")
    [logged] = json.loads(history.stdout)
    assert logged["runId"] == queued["runId"] and logged["status"] == "succeeded"
    assert logged["metrics"]["recall"] >= 0.70
    training = run["metrics"]["training"]  # what the training process cost, as measured
    assert training["peakRssMb"] > 10 and training["cpuS"] > 0
    stats = run["data_stats"]  # the training split is scratch; the holdout stays for validation
    assert not Path(stats["train_path"]).exists() and Path(stats["holdout_path"]).is_file()
    artifacts = stack.base / "artifacts/acme-corp" / queued["version"]
    for name in (
        "metrics.json",
        "training_config.json",
        "validation.json",
        "manifest.json",
        "train.log",
    ):
        assert (artifacts / name).is_file(), name


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hyperparameters": {"numLeavs": 8}}, "hyperparameters.numLeavs"),
        ({"hyperparameters": {"learningRate": -1}}, "hyperparameters.learningRate"),
        (
            {"dataRange": {"startDate": "2026-03-01", "endDate": "2026-01-01"}},
            "dataRange.startDate",
        ),
        ({"featureColumns": ["temperature", "humidity"]}, "featureColumns[1]"),
        ({"organizationId": "../x"}, "organizationId"),
    ],
)
def test_a_bad_request_is_refused_naming_the_field_and_creates_no_run(stack, change, field) -> None:
    stack.register("acme-corp", scada.ACME_LAYOUT)
    request = {"organizationId": "acme-corp", "dataRange": RANGE, **change}
    with pytest.raises(Exception) as err:
        stack.service.train_model(
            "acme-corp" if "organizationId" not in change else "../x", request
        )
    assert field in str(err.value)
    assert stack.service.get_training_history("acme-corp") == []


@on_both_brokers
def test_a_celery_client_gets_the_refusal_too(stack, worker) -> None:
    stack.register("acme-corp", scada.ACME_LAYOUT)
    client = stack.client()
    result = client.submit({"organizationId": "acme-corp", "hyperparameters": {"learningRate": -1}})
    with pytest.raises(Exception, match=r"hyperparameters\.learningRate"):
        result.get(timeout=60)
    assert stack.service.get_training_history("acme-corp") == []


def test_a_second_request_while_one_is_active_names_the_active_run(stack) -> None:
    stack.register("acme-corp", scada.ACME_LAYOUT)
    first = stack.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
    with pytest.raises(Exception, match=first.run_id):
        stack.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)


@on_both_brokers
def test_a_worker_picks_up_an_organization_registered_after_it_started(stack, worker) -> None:
    stack.register("globex", scada.GLOBEX_LAYOUT)
    handle = stack.service.train_model("globex", {"dataRange": RANGE}, wait=False)
    result = handle.wait(timeout_s=RUN_TIMEOUT_S)
    assert result["status"] == "succeeded", result["error"] or worker.log_tail()
    assert result["modelPath"]


@on_both_brokers
def test_a_worker_given_one_tenant_queue_serves_only_that_tenant(stack) -> None:
    stack.register("acme-corp", scada.ACME_LAYOUT)
    stack.register("globex", scada.GLOBEX_LAYOUT)
    with celery_worker(stack.env, stack.tmp, queues="org.acme-corp") as worker:
        acme = stack.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
        globex = stack.service.train_model("globex", {"dataRange": RANGE}, wait=False)
        assert acme.wait(timeout_s=RUN_TIMEOUT_S)["status"] == "succeeded", worker.log_tail()
        assert globex.status()["status"] == "queued"
        assert messages_waiting(stack.env, "org.globex") == 1


def test_without_auto_deploy_the_run_stops_validated_and_deploys_on_request(stack, worker) -> None:
    stack.register("acme-corp", scada.ACME_LAYOUT, autoDeploy=False)
    result = stack.service.train_model("acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
    assert result["status"] == "validated", result["error"] or worker.log_tail()
    assert stack.service.get_organization("acme-corp")["deployedVersion"] is None
    stack.trainctl("deploy", "acme-corp", result["version"])
    assert stack.service.get_organization("acme-corp")["deployedVersion"] == result["version"]


@on_both_brokers
def test_a_rejected_model_leaves_the_deployed_one_serving(stack, worker) -> None:
    stack.register("acme-corp", scada.ACME_LAYOUT)
    good = stack.service.train_model("acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
    assert good["status"] == "succeeded", good["error"] or worker.log_tail()
    doc = scada.demo_org_config("acme-corp", stack.scada_url, scada.ACME_LAYOUT)
    doc["mlModelConfig"]["thresholds"] = {"recall": 0.999, "precision": 0.999}
    stack.service.update_organization("acme-corp", doc)

    request = stack.tmp / "training.json"
    request.write_text(json.dumps({"dataRange": RANGE}))
    waited = stack.trainctl(
        "train", "acme-corp", "--config", str(request), "--wait", "--json", check=False
    )
    assert waited.returncode == 1
    rejected = json.loads(waited.stdout)
    assert rejected["status"] == "rejected"
    assert "recall" in rejected["error"] and "precision" in rejected["error"]
    assert stack.service.get_organization("acme-corp")["deployedVersion"] == good["version"]
    versions = {v["version"]: v for v in stack.service.list_versions("acme-corp")}
    assert versions[rejected["version"]]["status"] == "rejected"
    assert versions[good["version"]]["deployed"]


def test_a_stage_message_delivered_again_does_nothing(stack, worker) -> None:
    stack.register("acme-corp", scada.ACME_LAYOUT)
    done = stack.service.train_model("acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
    assert done["status"] == "succeeded", done["error"] or worker.log_tail()
    before = stack.run_row(done["runId"])
    app = sender(stack.env)
    for stage in ("training.extract", "training.train", "training.deploy"):
        app.send_task(stage, args=[done["runId"]], queue="org.acme-corp")
    app.close()
    wait_for(
        lambda: messages_waiting(stack.env, "org.acme-corp") == 0,
        30,
        "the repeated messages to be consumed",
    )
    assert stack.run_row(done["runId"]) == before
    assert stack.service.get_organization("acme-corp")["deploySequence"] == 1
    assert len(stack.service.list_versions("acme-corp")) == 1


def test_a_second_training_deploys_a_new_version_and_keeps_the_first(stack, worker) -> None:
    stack.register("acme-corp", scada.ACME_LAYOUT)
    first = stack.service.train_model("acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
    second = stack.service.train_model("acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
    assert (first["status"], second["status"]) == ("succeeded", "succeeded"), worker.log_tail()
    org = stack.service.get_organization("acme-corp")
    assert (org["deployedVersion"], org["previousVersion"]) == (second["version"], first["version"])
    assert (
        stack.base / "models/acme-corp" / f"deployed_{first['version']}" / "model.onnx"
    ).is_file()
    listing = stack.trainctl("versions", "acme-corp").stdout
    assert first["version"] in listing and second["version"] in listing


def test_trainctl_status_shows_the_deployed_version(stack, worker) -> None:
    stack.register("acme-corp", scada.ACME_LAYOUT)
    done = stack.service.train_model("acme-corp", {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
    status = stack.trainctl("status", "acme-corp").stdout
    assert done["version"] in status and "succeeded" in status


SLOW_SCRIPT = """
import runpy, sys, time
time.sleep({delay_s})
sys.argv[0] = {bundled!r}
runpy.run_path({bundled!r}, run_name="__main__")
"""


@on_both_brokers
def test_an_org_script_runs_and_a_duplicate_delivered_mid_run_does_nothing(stack, worker) -> None:
    from training_tasks.config.settings import BUNDLED_SCRIPT

    scripts = stack.base / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / "slow_train.py").write_text(
        SLOW_SCRIPT.format(delay_s=3, bundled=str(BUNDLED_SCRIPT))
    )
    stack.register("acme-corp", scada.ACME_LAYOUT, script="slow_train.py")
    handle = stack.service.train_model("acme-corp", {"dataRange": RANGE}, wait=False)
    wait_for(
        lambda: (stack.run_row(handle.run_id)["progress"] or {}).get("stage") == "train",
        60,
        "the run to reach the train stage",
    )
    app = sender(stack.env)
    app.send_task("training.train", args=[handle.run_id], queue="org.acme-corp")
    app.close()
    result = handle.wait(timeout_s=RUN_TIMEOUT_S)
    assert result["status"] == "succeeded", result["error"] or worker.log_tail()
    wait_for(
        lambda: "delivered again" in worker.log_tail(200), 30, "the duplicate to be turned away"
    )
    log = stack.base / "artifacts/acme-corp" / result["version"] / "train.log"
    assert log.is_file()
    assert stack.service.get_organization("acme-corp")["deploySequence"] == 1
