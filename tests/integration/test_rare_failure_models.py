"""A rare-failure organization end to end on a real worker: raw columns at 0.5 fail the gates; a
derived feature and a threshold chosen on the inner fold pass, and the deployed model carries
both, so a prediction service decides as validation did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.support.chaos import RANGE, RUN_TIMEOUT_S, START
from tests.support.processes import celery_worker
from training_tasks.demo import scada
from workers.model_cache import ModelCache

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]

ORG = "initech"


def test_derived_features_and_a_chosen_threshold_reach_the_deployed_model(chaos) -> None:
    frames = scada.iter_rare_failure_frames(assets=6, days=45, interval_min=15, seed=9, start=START)
    scada.write_scada_postgres(chaos.scada_url, frames, scada.INITECH_LAYOUT)
    chaos.register(ORG, scada.INITECH_LAYOUT, **scada.RARE_FAILURE_MODEL)
    raw_request = {
        "dataRange": RANGE,
        "derivedFeatures": {},
        "decisionPolicy": {"type": "fixed", "threshold": 0.5},
    }
    with celery_worker(chaos.env, chaos.tmp) as worker:
        raw = chaos.service.train_model(ORG, raw_request, wait=True, timeout_s=RUN_TIMEOUT_S)
        tuned = chaos.service.train_model(
            ORG, {"dataRange": RANGE}, wait=True, timeout_s=RUN_TIMEOUT_S
        )
    assert raw["status"] == "rejected", raw["error"] or worker.log_tail()
    assert "recall" in raw["error"]
    assert tuned["status"] == "succeeded", tuned["error"] or worker.log_tail()

    metrics = tuned["metrics"]
    threshold = metrics["decisionThreshold"]
    assert 0.0 < threshold < 1.0
    assert metrics["precision"] >= 0.7 and metrics["recall"] >= 0.7
    interval = metrics["intervals"]["recall"]
    assert interval["low"] <= metrics["recall"] <= interval["high"]

    model_path = Path(tuned["modelPath"])
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    assert [i.shape[1] for i in session.get_inputs()] == [len(scada.FEATURES)]  # raw columns
    assert [o.name for o in session.get_outputs()] == ["failure_probability", "failure_alarm"]
    meta = session.get_modelmeta().custom_metadata_map
    assert float(meta["decision_threshold"]) == threshold
    assert "pressure_per_degree" in meta["derived_features"]

    unseen = next(
        scada.iter_rare_failure_frames(assets=2, days=2, interval_min=15, seed=99, start=START)
    )
    rows = unseen[list(scada.FEATURES)].to_numpy(np.float32)
    with ModelCache(chaos.env["REDIS_URL"], chaos.base, [ORG]) as cache:
        prediction = cache.predict(ORG, rows)
    assert prediction.threshold == threshold
    assert np.array_equal(prediction.alarms, prediction.probabilities >= np.float32(threshold))
    caught = prediction.alarms[unseen[scada.TARGET].to_numpy() == 1].mean()
    assert caught >= 0.7  # the failures of rows it never saw are mostly caught
