"""Organization configs: every section is checked, the SCADA secret is never shown."""

import pytest

from training_tasks.config.org import parse_org_config
from training_tasks.errors import ConfigError
from training_tasks.redaction import mask_url

BASE = {
    "mlModelConfig": {"featureColumns": ["temperature"], "targetColumn": "failure"},
    "trainingSchedule": {"pattern": "0 2 * * 0", "timezone": "America/New_York", "enabled": True},
    "scadaDbConfig": {"url": "postgresql://scada:hunter2@127.0.0.1:5432/plant"},
    "schemaConfig": {
        "table": "sensor_readings",
        "timestampColumn": "ts",
        "assetColumn": "asset_id",
        "columnMappings": {"temperature": "temp_c"},
    },
}


def test_a_complete_config_parses_and_maps_columns() -> None:
    org = parse_org_config(BASE, "acme-corp")
    assert org.schema_config.physical("temperature") == "temp_c"
    assert org.schema_config.physical("pressure") == "pressure"
    assert org.thresholds["recall"] == 0.70
    assert org.auto_deploy is True


def test_the_scada_password_never_appears_in_the_public_form_or_repr() -> None:
    org = parse_org_config(BASE, "acme-corp")
    assert "hunter2" not in str(org.public_dict())
    assert "hunter2" not in repr(org)
    assert org.resolve_scada_url().endswith("@127.0.0.1:5432/plant")


def test_a_url_from_an_environment_variable_is_read_on_use() -> None:
    org = parse_org_config({**BASE, "scadaDbConfig": {"urlEnv": "ACME_SCADA_URL"}}, "acme-corp")
    assert org.resolve_scada_url({"ACME_SCADA_URL": "sqlite:///x.db"}) == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="ACME_SCADA_URL"):
        org.resolve_scada_url({})


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        (
            {"trainingSchedule": {"pattern": "every day", "timezone": "UTC"}},
            "trainingSchedule.pattern",
        ),
        (
            {"trainingSchedule": {"pattern": "0 2 * * 0", "timezone": "Mars/Olympus"}},
            "trainingSchedule.timezone",
        ),
        ({"scadaDbConfig": {"url": "mysql://x@y/z"}}, "scadaDbConfig.url"),
        ({"scadaDbConfig": {}}, "scadaDbConfig"),
        ({"mlModelConfig": {"thresholds": {"recall": 2}}}, "mlModelConfig.thresholds.recall"),
        ({"mlModelConfig": {"script": "../../etc/evil.py"}}, "mlModelConfig.script"),
        ({"mlModelConfig": {"autoDeploy": "yes"}}, "mlModelConfig.autoDeploy"),
        ({"schemaConfig": {"timestampColumn": "ts"}}, "schemaConfig.table"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_a_bad_section_is_refused_with_the_field_named(patch: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_org_config({**BASE, **patch}, "acme-corp")
    assert err.value.field == field


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("postgresql://u:p%40ss@h:5/db") == "postgresql://u:***@h:5/db"
    assert mask_url("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"


def test_a_password_is_masked_also_without_a_user_name() -> None:
    assert mask_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert mask_url("postgresql://scada:s3cret@db/plant") == "postgresql://scada:***@db/plant"


def test_model_defaults_whose_target_is_also_a_feature_cannot_be_stored() -> None:
    doc = {
        **BASE,
        "mlModelConfig": {
            "featureColumns": ["temperature", "fail_flag"],
            "targetColumn": "failure",
        },
        "schemaConfig": {**BASE["schemaConfig"], "columnMappings": {"fail_flag": "failure"}},
    }
    with pytest.raises(ConfigError) as err:
        parse_org_config(doc, "acme-corp")
    assert err.value.field == "mlModelConfig.featureColumns"
    assert (
        "mlModelConfig.targetColumn 'failure' and mlModelConfig.featureColumns[1] 'fail_flag' "
        "are the same SCADA column 'failure'"
    ) in str(err.value)


def test_a_config_that_is_not_an_object_or_nests_too_deep_is_refused_by_field() -> None:
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_org_config([BASE], "acme-corp")
    deep: dict = {}
    for _ in range(100_000):
        deep = {"x": deep}
    with pytest.raises(ConfigError) as err:
        parse_org_config({**BASE, "mlModelConfig": deep}, "acme-corp")
    assert err.value.field.startswith("mlModelConfig.x.x")


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"organizationId": "a" * 10_000}, "organizationId"),
        ({"mlModelConfig": {"script": ["x" * 1_000_000]}}, "mlModelConfig.script"),
        ({"scadaDbConfig": {"urlEnv": "A" * 1_000_000}}, "scadaDbConfig.urlEnv"),
        ({"alerts": {"webhookUrl": "ftp://" + "h" * 2000}}, "alerts.webhookUrl"),
        ({"name": "n" * 1_000_000}, "name"),
        ({"schemaConfig": {**BASE["schemaConfig"], "table": "t" * 10_000_000}}, "schemaConfig"),
    ],
)
def test_an_error_repeats_at_most_about_100_characters_of_a_bad_value(
    patch: dict, field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_org_config({**BASE, **patch}, "acme-corp")
    assert err.value.field.startswith(field)
    assert len(str(err.value)) < 400, str(err.value)[:500]


@pytest.mark.parametrize(
    ("schedule", "field", "problem"),
    [
        (["0 2 * * 0"], "trainingSchedule", "must be a JSON object, got a list"),
        ({"pattern": [[["0 2 * * 0"]]]}, "trainingSchedule.pattern", "got list"),
        ({"pattern": "0 2 * * 0 " * 100_000}, "trainingSchedule.pattern", "at most 128"),
        (
            {"pattern": "0 2 * * 0", "enabled": "y" * 10**6},
            "trainingSchedule.enabled",
            "(1,000,000",
        ),
    ],
)
def test_a_schedule_of_the_wrong_shape_is_refused_by_field_in_a_short_message(
    schedule: object, field: str, problem: str
) -> None:
    from training_tasks.config.org import parse_schedule

    with pytest.raises(ConfigError) as err:
        parse_schedule(schedule)
    assert err.value.field == field and problem in err.value.problem
    assert len(str(err.value)) < 300
