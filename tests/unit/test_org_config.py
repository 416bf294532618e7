"""Organization configs: every section is checked, the SCADA secret is never shown."""

import pytest

from training_tasks.errors import ConfigError
from training_tasks.org_config import mask_url, parse_org_config

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
    from training_tasks.org_config import mask_url

    assert mask_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert mask_url("postgresql://scada:s3cret@db/plant") == "postgresql://scada:***@db/plant"
