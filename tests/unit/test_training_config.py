"""Training requests are checked field by field and merged with the organization's defaults."""

from datetime import UTC, datetime

import pytest

from training_tasks.config.training import (
    DEFAULT_HYPERPARAMETERS,
    check_request,
    from_wire,
    resolve,
)
from training_tasks.errors import ConfigError

NOW = datetime(2026, 6, 1, tzinfo=UTC)
ORG_DEFAULTS = {
    "featureColumns": ["temperature", "pressure"],
    "targetColumn": "failure",
    "hyperparameters": {"numLeaves": 15},
    "dataWindowDays": 30,
}
GOOD = {
    "organizationId": "acme-corp",
    "dataRange": {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-03-01"},
    "hyperparameters": {"learningRate": 0.1, "numIterations": 50},
    "validationSplit": 0.25,
}


def test_a_request_is_merged_over_org_defaults_over_built_in_defaults() -> None:
    config = resolve(GOOD, "acme-corp", ORG_DEFAULTS, NOW)
    assert config.hyperparameters["numLeaves"] == 15
    assert config.hyperparameters["learningRate"] == 0.1
    assert config.hyperparameters["maxDepth"] == DEFAULT_HYPERPARAMETERS["maxDepth"]
    assert config.feature_columns == ("temperature", "pressure")
    assert config.start == datetime(2026, 1, 1, tzinfo=UTC)
    assert config.end == datetime(2026, 3, 1, tzinfo=UTC)
    assert config.lightgbm_params()["learning_rate"] == 0.1


def test_without_a_data_range_the_org_window_ending_now_is_used() -> None:
    config = resolve({}, "acme-corp", ORG_DEFAULTS, NOW)
    assert config.end == NOW
    assert (config.end - config.start).days == 30


def test_the_wire_form_round_trips() -> None:
    config = resolve(GOOD, "acme-corp", ORG_DEFAULTS, NOW)
    assert from_wire(config.to_wire()) == config
    assert config.to_wire()["dataRange"]["startDate"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"hyperparameters": {"numLeavs": 3}}, "hyperparameters.numLeavs"),
        ({"hyperparameters": {"learningRate": -1}}, "hyperparameters.learningRate"),
        ({"hyperparameters": {"numIterations": True}}, "hyperparameters.numIterations"),
        ({"hyperparameters": {"objective": "regression"}}, "hyperparameters.objective"),
        (
            {"dataRange": {"startDate": "2026-05-01", "endDate": "2026-01-01"}},
            "dataRange.startDate",
        ),
        ({"dataRange": {"startDate": "yesterday", "endDate": "2026-01-01"}}, "dataRange.startDate"),
        ({"dataRange": {"startDate": "2026-01-01"}}, "dataRange.endDate"),
        ({"validationSplit": 0.9}, "validationSplit"),
        ({"featureColumns": []}, "featureColumns"),
        ({"featureColumns": ["a", "a"]}, "featureColumns"),
        ({"organizationId": "../x"}, "organizationId"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_a_bad_field_is_refused_with_its_name(patch: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_request({**GOOD, **patch})
    assert err.value.field == field
    assert field in str(err.value)


def test_a_request_for_another_organization_is_refused() -> None:
    with pytest.raises(ConfigError, match="organizationId"):
        resolve({**GOOD, "organizationId": "globex"}, "acme-corp", ORG_DEFAULTS, NOW)


def test_the_target_may_not_also_be_a_feature() -> None:
    with pytest.raises(ConfigError, match="featureColumns"):
        resolve({"featureColumns": ["failure", "pressure"]}, "acme-corp", ORG_DEFAULTS, NOW)


def test_missing_features_without_org_defaults_are_reported() -> None:
    with pytest.raises(ConfigError, match="featureColumns"):
        resolve({"targetColumn": "failure"}, "acme-corp", {}, NOW)


def test_a_config_error_survives_pickling_free_serialization_by_its_args() -> None:
    err = ConfigError("validationSplit", "must be at most 0.5")
    rebuilt = ConfigError(*err.args)
    assert str(rebuilt) == "validationSplit: must be at most 0.5"


MAPPED = {"fail_flag": "failure", "temperature": "temp_c"}


@pytest.mark.parametrize(
    ("target", "features", "mappings", "named"),
    [
        # the target by its physical name, a feature by a logical name mapped to that column
        ("failure", ["temperature", "fail_flag"], MAPPED, ("'failure'", "'fail_flag'")),
        # the target by a logical name, a feature by the physical name it maps to
        ("broken", ["temp_c", "failure"], {"broken": "failure"}, ("'broken'", "'failure'")),
        # two logical names mapped to one column
        ("broken", ["fail_flag"], {"broken": "failure", "fail_flag": "failure"}, ("'broken'",)),
        # names that differ only in case: SQLite reads the same column for both
        ("failure", ["pressure", "FAILURE"], {}, ("'FAILURE'", "differ only in case")),
    ],
)
def test_a_column_is_never_both_the_target_and_a_feature_whatever_it_is_called(
    target: str, features: list[str], mappings: dict[str, str], named: tuple[str, ...]
) -> None:
    request = {"targetColumn": target, "featureColumns": features}
    with pytest.raises(ConfigError) as err:
        resolve(request, "acme-corp", ORG_DEFAULTS, NOW, mappings)
    assert err.value.field == "featureColumns"
    message = str(err.value)
    assert f"targetColumn {target!r} and featureColumns[" in message
    assert "are the same SCADA column 'failure'" in message
    assert all(name in message for name in named)
    assert "a column is either the target or a feature, never both" in message


def test_names_are_compared_as_the_columns_they_map_to_not_as_written() -> None:
    # 'failure' is itself mapped elsewhere, so the feature 'fail_flag' (-> failure) is another column
    mappings = {"failure": "fail_raw", "fail_flag": "failure"}
    request = {"targetColumn": "failure", "featureColumns": ["fail_flag", "pressure"]}
    config = resolve(request, "acme-corp", ORG_DEFAULTS, NOW, mappings)
    assert config.target_column == "failure"
    assert config.feature_columns == ("fail_flag", "pressure")


def test_a_request_that_is_not_an_object_is_refused_naming_config() -> None:
    for request in (["failure"], "failure", 7):
        with pytest.raises(ConfigError) as err:
            resolve(request, "acme-corp", ORG_DEFAULTS, NOW)  # type: ignore[arg-type]
        assert err.value.field == "config" and "must be a JSON object" in str(err.value)


def test_a_deeply_nested_value_is_refused_naming_its_field_without_recursing() -> None:
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ConfigError) as err:
        check_request({**GOOD, "featureColumns": nested})
    assert err.value.field.startswith("featureColumns[0][0]")
    assert "more than 16 levels deep" in err.value.problem


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"targetColumn": "t" * 10_000_000}, "targetColumn"),
        ({"validationSplit": "0." + "9" * 1_000_000}, "validationSplit"),
        ({"hyperparameters": {"numLeaves": 10**4000}}, "hyperparameters.numLeaves"),
        ({"dataRange": {"startDate": "2026" * 100_000, "endDate": "2026-01-01"}}, "dataRange"),
        ({"featureColumns": ["a"] * 100_000}, "featureColumns"),
        ({"k" * 100_000: 1}, "kkkkkkkk"),
    ],
)
def test_an_error_repeats_at_most_about_100_characters_of_a_bad_value(
    patch: dict, field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        check_request({**GOOD, **patch})
    assert err.value.field.startswith(field)
    assert len(str(err.value)) < 400, str(err.value)[:500]
