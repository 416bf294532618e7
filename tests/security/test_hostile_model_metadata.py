"""A training script writes the model file, so its metadata is hostile: derived-feature forms and
feature lists nested thousands deep, operations the language does not have, columns the data does
not hold. Validation rejects such a model with a sentence, and the model cache refuses it; neither
crashes. Oversized derived-feature requests are refused at submit, naming the field."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnx
import pytest

from tests.support.onnx_fixtures import (
    FEATURES,
    ORG_ID,
    VERSION,
    judge,
    make_data,
    save_onnx,
    to_onnx,
    train_booster,
    write_holdout,
)
from training_tasks.config.derived import MAX_FEATURES, MAX_NODES
from training_tasks.config.training import resolve
from training_tasks.errors import ConfigError
from training_tasks.protocol.hotswap import Deployment
from training_tasks.stages.validate.stage import validate
from workers.model_cache.errors import ModelRejected
from workers.model_cache.model import load_model

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads gives up with a RecursionError


def deep_ast(depth: int) -> str:
    """A well-formed form `depth` negations deep, as JSON text (json.dumps would recurse)."""
    return '{"op": "neg", "args": [' * depth + json.dumps({"col": FEATURES[0]}) + "]}" * depth


def feature(ast: object) -> str:
    text = ast if isinstance(ast, str) else json.dumps(ast)
    return '[{"name": "x", "expression": "hostile", "ast": ' + text + "}]"


HOSTILE_DERIVED = {
    "nested too deep for json": DEEP,
    "more parts than a parsed form has": feature(deep_ast(300)),
    "an operation the language lacks": feature({"fn": "system", "args": [{"num": 1}]}),
    "a column the data does not hold": feature({"col": "password"}),
    "a number that is not finite": json.dumps(
        [{"name": "x", "expression": "e", "ast": {"num": "inf"}}]
    ),
    "the wrong number of arguments": feature({"fn": "min", "args": [{"col": FEATURES[0]}]}),
}


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train_booster(*make_data(2000, seed=1))


@pytest.fixture(scope="module")
def holdout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_holdout(
        tmp_path_factory.mktemp("data") / "holdout.parquet", *make_data(500, seed=2)
    )


def deployment_of(path: Path) -> Deployment:
    return Deployment(
        organizationId=ORG_ID,
        version=VERSION,
        modelPath=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        deployedAt="2026-01-01T00:00:00Z",
        sequence=1,
    )


def with_metadata(booster: lgb.Booster, **props: str) -> onnx.ModelProto:
    model = to_onnx(booster)
    entries = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(model, {**entries, **props})
    return model


@pytest.mark.parametrize("what", list(HOSTILE_DERIVED))
def test_hostile_derived_feature_metadata_rejects_a_model_judged_on_its_own(
    booster: lgb.Booster, holdout: Path, tmp_path: Path, what: str
) -> None:
    model = with_metadata(booster, derived_features=HOSTILE_DERIVED[what])
    path = save_onnx(tmp_path, model, native=booster)
    report = validate(
        org_id=ORG_ID,
        version=VERSION,
        model_path=path,
        holdout_path=holdout,
        feature_columns=FEATURES,
        target_column="failure",
        thresholds={"notWorseThanDeployed": False},
        native_model_path=path.with_name("model.txt"),
    )
    assert not report.passed
    assert any("derived_features" in failure for failure in report.failures), report.failures


def test_a_feature_list_nested_too_deep_is_rejected_by_validation_and_the_model_cache(
    booster: lgb.Booster, holdout: Path, tmp_path: Path
) -> None:
    model = with_metadata(booster, feature_columns=DEEP)
    path = save_onnx(tmp_path / "ml" / "models" / ORG_ID / f"deployed_{VERSION}", model)
    report = validate(
        org_id=ORG_ID,
        version=VERSION,
        model_path=path,
        holdout_path=holdout,
        feature_columns=FEATURES,
        target_column="failure",
        thresholds={"notWorseThanDeployed": False},
    )
    assert not report.passed
    assert any("feature_columns" in failure for failure in report.failures), report.failures
    deployment = deployment_of(path)
    with pytest.raises(ModelRejected, match="feature_columns"):
        load_model(tmp_path / "ml", ORG_ID, deployment)


@pytest.mark.parametrize(
    ("derived", "words"),
    [
        ({f"f{i}": "torque" for i in range(MAX_FEATURES + 1)}, f"at most {MAX_FEATURES}"),
        ({"big": "+".join(["a"] * (MAX_NODES + 1))}, f"more than {MAX_NODES} parts"),
        ({"long": "torque" + " + torque" * 100}, "at most 500 characters"),
        ({"x" * 129: "torque"}, "at most 128 characters"),
    ],
)
def test_an_oversized_derived_feature_request_is_refused_at_submit(
    derived: dict[str, str], words: str
) -> None:
    org = {"featureColumns": ["torque", "rpm", "a"], "targetColumn": "failure"}
    with pytest.raises(ConfigError) as refused:
        resolve({"derivedFeatures": derived}, "acme-corp", org, datetime(2026, 6, 1, tzinfo=UTC))
    assert refused.value.field.startswith("derivedFeatures")
    assert words in str(refused.value)
    assert len(str(refused.value)) < 1000  # the refusal shows the input shortened


def test_the_model_cache_ignores_derived_feature_metadata_it_never_computes(
    booster: lgb.Booster, tmp_path: Path
) -> None:
    """The graph computes the features; a prediction service never parses the spec."""
    model = with_metadata(booster, derived_features=DEEP)
    path = save_onnx(tmp_path / "ml" / "models" / ORG_ID / f"deployed_{VERSION}", model)
    deployment = deployment_of(path)
    loaded = load_model(tmp_path / "ml", ORG_ID, deployment)
    rows = np.zeros((2, len(FEATURES)), dtype=np.float32)
    assert loaded.predict(rows).shape == (2,)


@pytest.mark.parametrize(
    ("written", "words"),
    [
        ("0.5", "is not a probability"),
        (True, "is not a probability"),
        ([0.5], "is not a probability"),
        (float("nan"), "is not a probability"),
        (1e308, "is not a probability"),
        (None, "records no decision_threshold"),
    ],
)
def test_a_threshold_the_script_wrote_wrongly_into_metrics_json_rejects_the_version(
    booster: lgb.Booster, holdout: Path, tmp_path: Path, written: object, words: str
) -> None:
    path = save_onnx(tmp_path, to_onnx(booster), native=booster)
    report = judge(path, holdout, recorded_thresholds={"metrics.json": written})
    assert not report.passed
    assert any("metrics.json" in f and words in f for f in report.failures), report.failures
