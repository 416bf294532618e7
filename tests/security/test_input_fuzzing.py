"""Generated input against every parser an organization or client can reach.

The only allowed failure is the project's own ConfigError naming a field; anything accepted must
be safe to build paths, queue names, Redis keys and SQL from.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training_tasks.config import training as training_config
from training_tasks.config.org import parse_org_config, parse_schedule
from training_tasks.errors import ConfigError
from training_tasks.protocol.ids import (
    ORG_ID_PATTERN,
    check_org_id,
    check_run_id,
    check_version_id,
    org_queue,
)
from training_tasks.protocol.paths import ModelStore

NOW = datetime(2026, 6, 1, tzinfo=UTC)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
hostile_text = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        [
            "../etc",
            "acme/../globex",
            "acme\n",
            "acme\x00",
            "ACME",
            "acme corp",
            "-acme",
            "acme-",
            "\u0430cme",  # a Cyrillic a
            "a" * 64,
            "acme;rm -rf /",
            "org.acme",
            "*",
            "",
        ]
    ),
)
VALID_ORG = {
    "mlModelConfig": {"featureColumns": ["temperature"], "targetColumn": "failure"},
    "scadaDbConfig": {"urlEnv": "ACME_SCADA_URL"},
    "schemaConfig": {"table": "sensor_readings", "timestampColumn": "ts"},
}


@FUZZ
@given(hostile_text)
def test_an_accepted_organization_id_is_safe_for_paths_queues_and_keys(text: str) -> None:
    try:
        org_id = check_org_id(text)
    except ConfigError as err:
        assert err.field == "organizationId"
        return
    assert ORG_ID_PATTERN.fullmatch(org_id) and len(org_id) <= 63
    assert not set(org_id) & set("/\\.\n\r\x00 :*?")
    store = ModelStore(Path("/srv/ml"))
    assert store.org_models(org_id).parent == store.base / "models"
    assert org_queue(org_id) == f"org.{org_id}"


@FUZZ
@given(hostile_text)
def test_version_and_run_ids_accept_only_their_own_shape(text: str) -> None:
    for check in (check_version_id, check_run_id):
        try:
            accepted = check(text)
        except ConfigError:
            continue
        assert "/" not in accepted and "\n" not in accepted and ".." not in accepted


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([*VALID_ORG, "trainingSchedule", "alerts", "name", "x"]),
        json_values,
        max_size=6,
    )
)
def test_an_organization_config_of_any_shape_is_accepted_or_refused_by_field(
    doc: dict[str, Any],
) -> None:
    try:
        parse_org_config(doc, "acme")
    except ConfigError as err:
        assert err.field and err.problem


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            ["table", "schema", "timestampColumn", "assetColumn", "columnMappings", "x"]
        ),
        json_values | hostile_text,
        max_size=5,
    )
)
def test_schema_config_and_column_mappings_of_any_shape_are_refused_by_field(
    schema: dict[str, Any],
) -> None:
    doc = {**VALID_ORG, "schemaConfig": {**VALID_ORG["schemaConfig"], **schema}}
    try:
        org = parse_org_config(doc, "acme")
    except ConfigError as err:
        assert err.field.startswith(("schemaConfig", "mlModelConfig"))
        return
    for name in (org.schema_config.table, org.schema_config.timestamp_column):
        assert isinstance(name, str) and 0 < len(name) <= 128


@FUZZ
@given(
    st.dictionaries(st.sampled_from([*training_config.REQUEST_KEYS, "x"]), json_values, max_size=6)
)
def test_a_training_request_of_any_shape_resolves_or_is_refused_by_field(
    request: dict[str, Any],
) -> None:
    try:
        config = training_config.resolve(request, "acme", VALID_ORG["mlModelConfig"], NOW)
    except ConfigError as err:
        assert err.field is not None
        return
    json.dumps(config.to_wire())  # what is accepted travels as JSON
    assert config.start < config.end


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["pattern", "timezone", "enabled", "x"]),
        json_values | hostile_text,
        max_size=4,
    )
)
def test_a_schedule_of_any_shape_is_accepted_or_refused_by_field(schedule: dict[str, Any]) -> None:
    try:
        parsed = parse_schedule(schedule)
    except ConfigError as err:
        assert err.field.startswith("trainingSchedule")
        return
    assert set(parsed) == {"pattern", "timezone", "enabled"}


def _nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# Values an attacker would choose: megabytes of text, nesting past any recursion limit, numbers
# Python refuses to print, thousands of keys.
hostile_values = st.one_of(
    st.text(min_size=1, max_size=4).map(lambda t: t * 300_000),
    st.integers(17, 200_000).map(lambda depth: _nested(depth, "x")),
    st.integers(400, 9_000).map(lambda digits: 10**digits),
    st.integers(200, 5_000).map(lambda n: {f"key{i}": "v" * 50 for i in range(n)}),
    st.integers(600, 5_000).map(lambda n: ["name"] * n),
)
MAX_ERROR_CHARS = 500
REQUEST_FIELDS = [
    *training_config.REQUEST_KEYS,
    "hyperparameters.numLeaves",
    "hyperparameters.metric",
    "dataRange.startDate",
]
ORG_FIELDS = [
    "organizationId",
    "name",
    "mlModelConfig.script",
    "mlModelConfig.featureColumns",
    "mlModelConfig.thresholds.recall",
    "scadaDbConfig.urlEnv",
    "schemaConfig.table",
    "schemaConfig.columnMappings.temperature",
    "trainingSchedule.pattern",
    "trainingSchedule.timezone",
    "alerts.webhookUrl",
]


def _with(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of `doc` with the value at the dotted path replaced."""
    head, _, rest = dotted.partition(".")
    inner = doc.get(head) if isinstance(doc.get(head), dict) else {}
    return {**doc, head: _with(inner, rest, value) if rest else value}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(REQUEST_FIELDS), hostile_values)
def test_a_hostile_request_value_is_refused_echoing_at_most_about_100_characters(
    dotted: str, value: Any
) -> None:
    request = _with({"dataRange": {"endDate": "2026-01-01"}}, dotted, value)
    try:
        training_config.resolve(request, "acme", VALID_ORG["mlModelConfig"], NOW)
    except ConfigError as err:
        assert len(str(err)) < MAX_ERROR_CHARS, str(err)[: MAX_ERROR_CHARS * 2]
        return
    raise AssertionError(f"{dotted} accepted a hostile value")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ORG_FIELDS), hostile_values)
def test_a_hostile_organization_config_value_is_refused_echoing_at_most_about_100_characters(
    dotted: str, value: Any
) -> None:
    try:
        parse_org_config(_with(VALID_ORG, dotted, value), "acme")
    except ConfigError as err:
        assert len(str(err)) < MAX_ERROR_CHARS, str(err)[: MAX_ERROR_CHARS * 2]
        return
    raise AssertionError(f"{dotted} accepted a hostile value")


@FUZZ
@given(json_values | hostile_values | hostile_text)
def test_a_bad_value_is_shown_in_about_100_characters_whatever_it_is(value: Any) -> None:
    from training_tasks.fields import shown

    assert len(shown(value)) <= 140


@FUZZ
@given(hostile_values | hostile_text)
def test_every_id_checker_echoes_at_most_about_100_characters(value: Any) -> None:
    for check in (check_org_id, check_version_id, check_run_id):
        try:
            check(value)
        except ConfigError as err:
            assert len(str(err)) < MAX_ERROR_CHARS
