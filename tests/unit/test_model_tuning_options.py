"""The options an engineer tunes for rare failures are accepted on the wire, checked with a message
that names the field, recorded with the run, and handed to the training script."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training_tasks.config.derived import compile_features, evaluate, parse_feature
from training_tasks.config.org import parse_model_config
from training_tasks.config.training import from_wire, resolve
from training_tasks.errors import ConfigError
from training_tasks.stages.train import script_config

NOW = datetime(2026, 6, 1, tzinfo=UTC)
FEATURES = ["torque", "rpm", "process_temp", "air_temp", "tool_wear"]
ORG = {"featureColumns": FEATURES, "targetColumn": "failure", "dataWindowDays": 30}


def test_the_rare_failure_hyperparameters_are_accepted_and_kept() -> None:
    hyper = {
        "seed": 7,
        "scalePosWeight": 25.0,
        "minDataInLeaf": 5,
        "minSumHessianInLeaf": 0.01,
        "lambdaL1": 0.1,
        "lambdaL2": 1.0,
        "maxBin": 127,
        "earlyStoppingRounds": 20,
    }
    config = resolve({"hyperparameters": hyper}, "acme-corp", ORG, NOW)
    assert {k: config.hyperparameters[k] for k in hyper} == hyper
    params = config.lightgbm_params()
    assert params["scale_pos_weight"] == 25.0 and params["early_stopping_round"] == 20
    balanced = resolve({"hyperparameters": {"isUnbalance": True}}, "acme-corp", ORG, NOW)
    assert balanced.lightgbm_params()["is_unbalance"] is True


def test_a_run_without_a_seed_records_the_default_one() -> None:
    config = resolve({}, "acme-corp", ORG, NOW)
    assert config.hyperparameters["seed"] == 42
    assert config.to_wire()["hyperparameters"]["seed"] == 42


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        ({"hyperparameters": {"seed": -1}}, "hyperparameters.seed", ""),
        ({"hyperparameters": {"seed": 1.5}}, "hyperparameters.seed", ""),
        ({"hyperparameters": {"scalePosWeight": 0}}, "hyperparameters.scalePosWeight", ""),
        ({"hyperparameters": {"isUnbalance": "yes"}}, "hyperparameters.isUnbalance", ""),
        ({"hyperparameters": {"maxBin": 1}}, "hyperparameters.maxBin", ""),
        ({"hyperparameters": {"lambdaL2": -0.5}}, "hyperparameters.lambdaL2", ""),
        (
            {"hyperparameters": {"earlyStoppingRounds": 0}},
            "hyperparameters.earlyStoppingRounds",
            "",
        ),
        (
            {"hyperparameters": {"isUnbalance": True, "scalePosWeight": 3}},
            "hyperparameters.scalePosWeight",
            "isUnbalance",
        ),
        ({"innerValidationSplit": 0.9}, "innerValidationSplit", ""),
        ({"decisionPolicy": {"type": "best"}}, "decisionPolicy.type", "maxF1"),
        ({"decisionPolicy": {"type": "precisionAtLeast"}}, "decisionPolicy.value", "required"),
        ({"decisionPolicy": {"type": "fixed", "threshold": 1.5}}, "decisionPolicy.threshold", ""),
        (
            {"decisionPolicy": {"type": "maxF1", "value": 0.8}},
            "decisionPolicy.value",
            "allowed keys",
        ),
        ({"derivedFeatures": {"torque": "rpm * 2"}}, "derivedFeatures.torque", "raw feature"),
        ({"derivedFeatures": {"failure": "rpm * 2"}}, "derivedFeatures.failure", "targetColumn"),
        ({"derivedFeatures": {"p": "torque * speed"}}, "derivedFeatures.p", "position 10"),
    ],
)
def test_a_bad_option_is_refused_naming_the_field(
    request_: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        resolve(request_, "acme-corp", ORG, NOW)
    assert refused.value.field == field
    assert words in str(refused.value)


def test_the_org_config_checks_policies_features_and_the_holdout_floor() -> None:
    model = parse_model_config(
        {
            **ORG,
            "decisionPolicy": {"type": "recallAtLeast", "value": 0.8},
            "derivedFeatures": {"power_w": "torque * rpm * 2 * pi / 60"},
            "innerValidationSplit": 0.25,
            "thresholds": {"minHoldoutPositives": 40},
        }
    )
    config = resolve({}, "acme-corp", model, NOW)
    assert config.decision_policy == {"type": "recallAtLeast", "value": 0.8}
    assert config.derived_features == {"power_w": "torque * rpm * 2 * pi / 60"}
    assert config.inner_validation_split == 0.25
    with pytest.raises(ConfigError) as refused:
        parse_model_config({**ORG, "derivedFeatures": {"x": "sqrt(torque"}})
    assert refused.value.field == "mlModelConfig.derivedFeatures.x"
    with pytest.raises(ConfigError) as refused:
        parse_model_config({**ORG, "thresholds": {"minHoldoutPositives": -1}})
    assert refused.value.field == "mlModelConfig.thresholds.minHoldoutPositives"


def test_a_run_stored_before_these_options_reads_back_with_the_defaults() -> None:
    wire = resolve({}, "acme-corp", ORG, NOW).to_wire()
    for key in ("innerValidationSplit", "decisionPolicy", "derivedFeatures"):
        del wire[key]
    old = from_wire(wire)
    assert old.inner_validation_split == 0.2
    assert old.decision_policy == {"type": "fixed", "threshold": 0.5}
    assert old.derived_features == {}


def test_the_script_gets_the_parsed_features_and_the_policy(tmp_path: Path) -> None:
    model = {**ORG, "derivedFeatures": {"strain": "tool_wear * torque"}}
    config = resolve({"decisionPolicy": {"type": "maxF1"}}, "acme-corp", model, NOW)
    doc = script_config(
        config,
        version="v1",
        train_path=tmp_path / "t",
        holdout_path=tmp_path / "h",
        output_dir=tmp_path,
    )
    json.dumps(doc)  # what the script reads is plain JSON
    assert doc["decisionPolicy"] == {"type": "maxF1"}
    assert doc["innerValidationSplit"] == 0.2
    assert doc["featureColumns"] == FEATURES  # the model still takes the raw columns
    assert doc["derivedFeatures"] == [
        {
            "name": "strain",
            "expression": "tool_wear * torque",
            "ast": {"op": "*", "args": [{"col": "tool_wear"}, {"col": "torque"}]},
        }
    ]


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("torque *", 9, "ends too early"),
        ("torque ** 2", 9, "not expected"),
        ("__import__('os').system('id')", 12, "not allowed"),
        ("torque.real", 7, "not allowed"),
        ("min(torque)", 1, "takes 2 arguments"),
        ("sqrt(torque, rpm)", 1, "takes 1 argument"),
        ("(torque + rpm", 14, "')' is missing"),
        ("lambda_ + 1", 1, "not a raw feature"),
        ("1e999 * torque", 1, "not a finite number"),
        ("(" * 40 + "torque" + ")" * 40, 33, "deeper than 32"),
    ],
)
def test_an_expression_outside_the_language_is_refused_at_its_position(
    text: str, position: int, words: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_feature("f", text, "mlModelConfig.derivedFeatures", FEATURES)
    message = str(refused.value)
    assert refused.value.field == "mlModelConfig.derivedFeatures.f"
    assert f"at position {position} of" in message and words in message


def test_features_are_computed_in_float32_as_the_expressions_say() -> None:
    rng = np.random.default_rng(3)
    columns = {name: rng.uniform(0.5, 50, 1000).astype(np.float32) for name in FEATURES}
    spec = {
        "power_w": "torque * rpm * 2 * pi / 60",
        "temp_diff": "process_temp - air_temp",
        "mixed": "-abs(torque - rpm) + max(rpm, 20) / sqrt(log1p(exp(air_temp / 50)))",
        "lowest": "min(torque, tool_wear) - +1.5e1",
    }
    got = evaluate(compile_features(spec, FEATURES), columns)
    t, r, p, a, w = (columns[n] for n in FEATURES)
    f32 = np.float32
    expected = [
        t * r * f32(2 * np.pi / 60),  # constants are folded: one multiplication in the graph
        p - a,
        -np.abs(t - r) + np.maximum(r, f32(20)) / np.sqrt(np.log(np.exp(a * f32(0.02)) + f32(1))),
        np.minimum(t, w) - f32(15),
    ]
    for column, want in zip(got, expected, strict=True):
        assert column.dtype == np.float32 and column.shape == (1000,)
        np.testing.assert_array_equal(column, want.astype(np.float32))


@pytest.mark.parametrize(
    ("text", "ast"),
    [
        ("2 * pi / 60", {"num": 2 * math.pi / 60}),
        (
            "torque * rpm * 2 * pi / 60",
            {
                "op": "*",
                "args": [
                    {"op": "*", "args": [{"col": "torque"}, {"col": "rpm"}]},
                    {"num": 2 * math.pi / 60},
                ],
            },
        ),
        ("torque / 4 / 2", {"op": "*", "args": [{"col": "torque"}, {"num": 0.125}]}),
    ],
)
def test_constants_are_folded_so_the_model_computes_fewer_operations(
    text: str, ast: dict[str, Any]
) -> None:
    assert parse_feature("f", text, "derivedFeatures", FEATURES) == ast


def test_a_division_by_a_zero_constant_is_refused() -> None:
    with pytest.raises(ConfigError, match="divides by zero at position 8"):
        parse_feature("f", "torque / 0", "derivedFeatures", FEATURES)
