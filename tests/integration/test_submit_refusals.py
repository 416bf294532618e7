"""`training.submit` over a real worker refuses a bad request with a ConfigError naming the field.

A config that is a list or a string, or nested hundreds of levels deep, comes back as that
ConfigError (not an AttributeError or RecursionError, and the worker lives on); a huge value is
echoed shortened, in the error and in the result Celery stores; a feature that is the target
under another name is refused. No run row is created for any of them.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from tests.security.test_hostile_messages import still_works
from tests.support.processes import Worker, celery_worker, service_env
from training_tasks.client import REQUESTS_QUEUE, SUBMIT_TASK, TrainingClient
from training_tasks.config.settings import Settings
from training_tasks.errors import ConfigError
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService

pytestmark = [pytest.mark.integration, pytest.mark.redis]

ORG = {
    "mlModelConfig": {"featureColumns": ["temperature", "pressure"], "targetColumn": "failure"},
    "scadaDbConfig": {"urlEnv": "NOT_SET_HERE"},
    "schemaConfig": {
        "table": "sensor_readings",
        "timestampColumn": "ts",
        "columnMappings": {"fail_flag": "failure"},
    },
}
RESULT_TIMEOUT_S = 30
MAX_STORED_BYTES = 8 * 1024  # what Redis keeps of one refused request, error and all


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, sqlite_url: str) -> Iterator[tuple[Worker, dict]]:
    env = service_env(redis_url=redis_url, database_url=sqlite_url, ml_base_path=tmp_path / "ml")
    service = TrainingService(build_runtime(Settings.from_env(env)))
    service.register_organization("acme", ORG)
    service.close()
    with celery_worker(env, tmp_path) as running:
        yield running, env


def nested(depth: int, leaf: Any = None) -> Any:
    value: Any = [] if leaf is None else leaf
    for _ in range(depth - 1):
        value = [value]
    return value


def refusal(env: dict[str, str], config: Any) -> tuple[ConfigError, int]:
    """Send `config` to training.submit; its ConfigError and the bytes Redis stores as result."""
    client = TrainingClient(env["REDIS_URL"])
    try:
        # TrainingClient.submit takes a mapping; a client in another language can send anything.
        result = client.app.send_task(SUBMIT_TASK, args=[config], queue=REQUESTS_QUEUE)
        with pytest.raises(ConfigError) as err:
            result.get(timeout=RESULT_TIMEOUT_S)
    finally:
        client.close()
    backend = redis_lib.Redis.from_url(env["REDIS_URL"])
    stored = backend.get(f"celery-task-meta-{result.id}")
    backend.close()
    return err.value, len(stored or b"")


def no_runs(env: dict[str, str]) -> bool:
    service = TrainingService(build_runtime(Settings.from_env(env)))
    try:
        return service.get_training_history("acme") == []
    finally:
        service.close()


@pytest.mark.parametrize(
    "config",
    [["acme"], "acme", 42, None, nested(300)],
    ids=["list", "string", "number", "null", "nested-list"],
)
def test_a_config_that_is_not_an_object_is_a_config_error_naming_config(stack, config) -> None:
    _running, env = stack
    err, _stored = refusal(env, config)
    assert err.field == "config"
    assert "must be a JSON object with the camelCase training config" in err.problem
    assert no_runs(env)


@pytest.mark.parametrize("depth", [50, 900, 950])
def test_a_field_nested_hundreds_deep_is_refused_by_name_and_the_worker_lives(
    stack, depth: int
) -> None:
    running, env = stack
    err, stored = refusal(env, {"organizationId": "acme", "featureColumns": nested(depth)})
    assert err.field == "featureColumns" + "[0]" * 15
    assert "nests lists or objects more than 16 levels deep" in err.problem
    assert stored < MAX_STORED_BYTES
    assert running.proc.poll() is None, running.log_tail()
    assert no_runs(env)
    still_works(env)


def test_a_huge_value_is_echoed_shortened_in_the_error_and_the_stored_result(stack) -> None:
    _running, env = stack
    err, stored = refusal(env, {"organizationId": "acme", "featureColumns": ["x" * 10_000_000]})
    assert err.field == "config" and "is 10,000,050 bytes of JSON" in err.problem
    assert stored < MAX_STORED_BYTES
    err, stored = refusal(env, {"organizationId": "a" * 10_000})
    assert err.field == "organizationId"
    assert "… (10,000 characters) is not a valid organization id" in err.problem
    assert len(str(err)) < 300 and stored < MAX_STORED_BYTES
    err, stored = refusal(env, {"organizationId": "acme", "targetColumn": "t" * 50_000})
    assert err.field == "targetColumn" and "… (50,000 characters)" in err.problem
    assert len(str(err)) < 300 and stored < MAX_STORED_BYTES
    assert no_runs(env)


def test_a_feature_that_is_the_target_under_another_name_is_refused_over_celery(stack) -> None:
    _running, env = stack
    config = {"organizationId": "acme", "featureColumns": ["temperature", "fail_flag"]}
    err, _stored = refusal(env, config)
    assert err.field == "featureColumns"
    assert (
        "targetColumn 'failure' and featureColumns[1] 'fail_flag' are the same SCADA column "
        "'failure'"
    ) in err.problem
    assert no_runs(env)


def test_a_service_database_that_does_not_exist_is_one_line_from_trainctl(
    tmp_path: Path, postgres_url: str
) -> None:
    missing = postgres_url.rsplit("/", 1)[0] + f"/missing_{uuid.uuid4().hex[:8]}"
    env = service_env(
        redis_url="redis://127.0.0.1:1/0", database_url=missing, ml_base_path=tmp_path
    )
    result = subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", "org", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    database = missing.rsplit("/", 1)[1]
    assert line.startswith("error: the service database ") and f"/{database} (DATABASE_URL)" in line
    assert "does not exist" in line and "trainctl db upgrade" in line
    assert "then run the command again" in line


def test_a_wait_that_times_out_is_one_line_saying_the_run_goes_on(
    tmp_path: Path, redis_url: str, sqlite_url: str
) -> None:
    env = service_env(redis_url=redis_url, database_url=sqlite_url, ml_base_path=tmp_path / "ml")
    service = TrainingService(build_runtime(Settings.from_env(env)))
    service.register_organization("acme", ORG)
    service.close()
    # No worker serves org.acme: the run stays queued past the timeout.
    result = subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", "train", "acme", "--wait", "--timeout", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [text for text in result.stderr.splitlines() if text.startswith("error:")]
    assert line.startswith("error: gave up waiting after 1 s; still going: ")
    assert "of acme (queued)" in line and line.endswith("`trainctl status acme`")
