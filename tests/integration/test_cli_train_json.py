"""`trainctl train --json` against a real broker: the queued run, camelCase like every JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_cli import BASE_ORG, _registered
from tests.unit.test_cli_errors import trainctl
from tests.unit.test_cli_json import keys_not_camel

pytestmark = pytest.mark.integration


def test_train_json_prints_the_queued_run_in_camel_case(tmp_path: Path, redis_url: str) -> None:
    _registered(tmp_path, "acme-corp", BASE_ORG).dispose()  # no worker: the run stays queued
    result = trainctl(tmp_path, "train", "acme-corp", "--json", REDIS_URL=redis_url)
    assert result.returncode == 0, result.stderr
    queued = json.loads(result.stdout)
    assert set(queued) == {"runId", "version", "queue"} and queued["queue"] == "org.acme-corp"
    assert keys_not_camel(queued) == []
    [run] = json.loads(trainctl(tmp_path, "history", "acme-corp", "--json").stdout)
    assert (run["runId"], run["status"]) == (queued["runId"], "queued")
    assert keys_not_camel(run) == []
