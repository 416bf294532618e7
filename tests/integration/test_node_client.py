"""The TypeScript client in clients/node, run by Node's own test runner against a real worker.

The wrapper installs the client's dependencies from its lock file (`npm ci`), compiles it, starts
a worker with one organization and demo SCADA data in PostgreSQL, and runs the Node tests twice:
first the protocol and training tests (submit, waitForRun, onModelSwap with a forced reconnect),
which write the deployment they received; then the model tests, with the probabilities the
Python model cache computes for the same rows, so both languages must agree on the same file.
Under CI=true a missing node or npm fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tests.support.processes import Worker, celery_worker, service_env, stop_group
from training_tasks.config.settings import Settings
from training_tasks.demo import scada
from training_tasks.demo.child_process import die_with_parent
from training_tasks.protocol.hotswap import Deployment
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService
from workers.model_cache.model import load_model

pytestmark = pytest.mark.integration

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
IN_CI = os.environ.get("CI", "").lower() == "true"
MIN_NODE_MAJOR = 20
NPM_CI_TIMEOUT_S = 300.0
BUILD_TIMEOUT_S = 120.0
NODE_TEST_TIMEOUT_S = 420.0
RUN_TIMEOUT_S = 240.0
START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 45
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-15T00:00:00Z"}


@dataclass
class Plant:
    """One registered organization with SCADA data, served by a running worker."""

    org_id: str
    env: dict[str, str]
    base: Path
    tmp: Path
    worker: Worker


def _require_node() -> None:
    """Fail (CI) or skip (elsewhere) unless node >= 20 and npm are on PATH."""
    problem = None
    if shutil.which("node") is None or shutil.which("npm") is None:
        problem = "node and npm are not on PATH"
    else:
        version = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        match = re.match(r"v(\d+)\.", version)
        if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
            problem = f"node {version.strip() or '?'} is older than {MIN_NODE_MAJOR}"
    if problem is None:
        return
    message = f"{problem}; install Node.js {MIN_NODE_MAJOR} or later with npm (Debian: nodejs npm)"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def _run(argv: list[str], env: Mapping[str, str], timeout_s: float, what: str) -> str:
    """Run `argv` in clients/node in its own process group, bounded; its output, or fail with it."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=CLIENT_DIR,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        raw, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(proc)  # node --test runs each file in a child process: stop them all
        raw, _ = proc.communicate()
        output = raw.decode(errors="replace")
        pytest.fail(f"{what} did not finish within {timeout_s} s:\n{output[-20000:]}")
    finally:
        stop_group(proc)
    output = raw.decode(errors="replace")
    elapsed_s = time.monotonic() - started
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{output[-20000:]}"
    print(f"{what}: {elapsed_s:.1f} s")
    return output


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    """Install the client's locked dependencies and compile it; the environment to run it in."""
    _require_node()
    env = dict(os.environ)
    # onnxruntime-node's CPU build is in its package; its installer would fetch CUDA files too.
    env["ONNXRUNTIME_NODE_INSTALL"] = "skip"
    env.pop("NODE_OPTIONS", None)
    _run(["npm", "ci", "--no-audit", "--no-fund"], env, NPM_CI_TIMEOUT_S, "npm ci")
    _run(["npm", "run", "build"], env, BUILD_TIMEOUT_S, "npm run build")
    return env


@pytest.fixture
def plant(tmp_path: Path, redis_url: str, postgres_factory: Callable[[], str]) -> Iterator[Plant]:
    service_db, scada_db = postgres_factory(), postgres_factory()
    frames = scada.iter_sensor_frames(assets=6, days=DAYS, interval_min=10, seed=7, start=START)
    scada.write_scada_postgres(scada_db, frames, scada.ACME_LAYOUT)
    base = tmp_path / "ml"
    env = service_env(redis_url=redis_url, database_url=service_db, ml_base_path=base)
    # Channels are shared by every Redis database: a unique org keeps other tests' messages out.
    org_id = f"node-{uuid.uuid4().hex[:8]}"
    service = TrainingService(build_runtime(Settings.from_env(env)))
    try:
        service.register_organization(
            org_id, scada.demo_org_config(org_id, scada_db, scada.ACME_LAYOUT)
        )
    finally:
        service.close()
    with celery_worker(env, tmp_path) as worker:
        yield Plant(org_id, env, base, tmp_path, worker)


def test_the_node_client_trains_follows_the_deployment_and_scores_like_python(
    plant: Plant, node_env: dict[str, str]
) -> None:
    deployment_path = plant.tmp / "node-deployment.json"
    env = {
        **node_env,
        "REDIS_URL": plant.env["REDIS_URL"],
        "ML_BASE_PATH": str(plant.base),
        "TEST_ORG": plant.org_id,
        "TEST_DATA_RANGE": json.dumps(RANGE),
        "TEST_RUN_TIMEOUT_MS": str(int(RUN_TIMEOUT_S * 1000)),
        "NODE_TEST_OUT": str(deployment_path),
    }
    tests = ["dist/test/protocol.test.js", "dist/test/training.test.js"]
    try:
        _run(["node", "--test", *tests], env, NODE_TEST_TIMEOUT_S, "node --test (training)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker log:\n{plant.worker.log_tail()}") from None

    deployment = Deployment(**json.loads(deployment_path.read_text()))
    expected_path = plant.tmp / "node-expected.json"
    expected_path.write_text(json.dumps(_python_predictions(plant, deployment)))
    env.update(NODE_TEST_EXPECTED=str(expected_path), NODE_TEST_SCRATCH=str(plant.tmp / "outside"))
    _run(
        ["node", "--test", "dist/test/model.test.js"],
        env,
        NODE_TEST_TIMEOUT_S,
        "node --test (model)",
    )


def _python_predictions(plant: Plant, deployment: Deployment) -> dict[str, object]:
    """What the Python model cache answers for unseen rows, alarming and quiet ones both."""
    model = load_model(plant.base, plant.org_id, deployment)
    unseen = scada.generate_sensor_frame(assets=3, days=10, interval_min=10, seed=99, start=START)
    rows = unseen[list(model.feature_columns)].to_numpy(np.float32)
    probabilities, alarms = model.decide(rows)
    alarming = np.flatnonzero(alarms)[:100]
    quiet = np.flatnonzero(~alarms)[:100]
    assert len(alarming) and len(quiet), "the unseen rows should hold alarming and quiet ones"
    chosen = np.concatenate([alarming, quiet])
    return {
        "deployment": json.loads(deployment.to_json()),
        "featureColumns": list(model.feature_columns),
        "rows": rows[chosen].astype(float).tolist(),
        "probabilities": probabilities[chosen].astype(float).tolist(),
        "alarms": alarms[chosen].astype(bool).tolist(),
        "threshold": model.threshold,
    }
