"""The Node client's loadModel on a window model scores windows exactly as the Python model
cache does: clients/node/test/window-model.test.ts, run by Node's test runner on a window model
and refused variants deployed here, with what the Python cache answers for the same windows.

It builds and runs the client as tests/integration/test_node_client.py does (npm ci, the build,
node --test), and needs no worker or Redis: loadModel reads only the model store.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.test_node_client import NODE_TEST_TIMEOUT_S, _run
from tests.integration.test_node_client import node_env as node_env  # the fixture
from tests.support.onnx_fixtures import (
    WINDOW,
    make_windows,
    to_onnx_window,
    train_window_booster,
)
from training_tasks.protocol.hotswap import Deployment
from workers.model_cache.model import load_model

pytestmark = pytest.mark.integration
# (metadata entries to replace, None removes; what the refusal says)
REFUSED: list[tuple[dict[str, str | None], str]] = [
    ({"window": None}, "has no window metadata"),
    ({"window": json.dumps({**WINDOW, "length": 24})}, r"for windows \[N, 24, 2\]"),
    ({"feature_columns": '["vibration", "pressure"]'}, "but its window holds the columns"),
    ({"window_feature_columns": '["vibration__mean"]'}, "not the statistics of its window"),
    ({"window": '{"length": 36}'}, "malformed metadata window"),
    ({"window": json.dumps({**WINDOW, "length": 10**9})}, "more than the"),
]


def version(n: int) -> str:
    return f"v2026-06-01T12-00-{n:02d}-000Z_{n:08x}"


def deploy(base: Path, org_id: str, n: int, data: bytes) -> Deployment:
    """Write `data` as version n's deployed model file (the model store only; no Redis)."""
    path = base / "models" / org_id / f"deployed_{version(n)}" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    return Deployment(org_id, version(n), str(path), sha256, "2026-06-01T12:00:00.000Z", n)


def expectations(base: Path, org_id: str) -> dict[str, Any]:
    """A window model and refused variants in the store, and the Python cache's answers."""
    booster = train_window_booster(*make_windows(1500), rounds=40)
    model = to_onnx_window(booster, threshold=0.4, org_id=org_id, version=version(1))
    deployment = deploy(base, org_id, 1, model.SerializeToString())
    windows, _ = make_windows(200, seed=11)
    probabilities, alarms = load_model(base, org_id, deployment).decide(windows)
    refused = []
    for n, (metadata, reason) in enumerate(REFUSED, start=2):
        bad = to_onnx_window(booster, org_id=org_id, version=version(n), metadata=metadata)
        bad_deployment = deploy(base, org_id, n, bad.SerializeToString())
        refused.append({"deployment": json.loads(bad_deployment.to_json()), "reason": reason})
    return {
        "deployment": json.loads(deployment.to_json()),
        "window": WINDOW,
        "windows": windows.astype(float).tolist(),
        "probabilities": probabilities.astype(float).tolist(),
        "alarms": alarms.tolist(),
        "threshold": 0.4,
        "refused": refused,
    }


def test_the_node_client_scores_windows_exactly_like_the_python_model_cache(
    tmp_path: Path, node_env: dict[str, str]
) -> None:
    base, org_id = tmp_path / "ml", f"node-{uuid.uuid4().hex[:8]}"
    expected = expectations(base, org_id)
    assert np.mean(expected["alarms"]) not in (0.0, 1.0), "windows of both decisions"
    expected_path = tmp_path / "node-window-expected.json"
    expected_path.write_text(json.dumps(expected))
    env = {
        **node_env,
        "ML_BASE_PATH": str(base),
        "NODE_TEST_WINDOW_EXPECTED": str(expected_path),
    }
    argv = ["node", "--test", "dist/test/window-model.test.js"]
    _run(argv, env, NODE_TEST_TIMEOUT_S, "node --test (window model)")
