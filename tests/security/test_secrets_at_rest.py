"""SCADA URLs at rest: encrypted in the database with ML_MASTER_KEYS, never shown, re-encryptable."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from training_tasks.config.org import parse_org_config
from training_tasks.config.training import resolve
from training_tasks.db.engine import make_engine, migrate
from training_tasks.db.tables import organizations
from training_tasks.protocol.keyring import Keyring, SealedDataError
from training_tasks.registry import audit, orgs
from training_tasks.sandbox import runner as sandbox
from training_tasks.stages.train import script_config

PASSWORD = "hunter2-Xq9"
SCADA_URL = f"postgresql://plant:{PASSWORD}@10.0.0.7:5432/scada"
OLD = "k1:" + base64.b64encode(b"\x11" * 32).decode()
NEW = "k2:" + base64.b64encode(b"\x22" * 32).decode()
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ORG_DOC: dict[str, Any] = {
    "mlModelConfig": {"featureColumns": ["temperature", "pressure"], "targetColumn": "failure"},
    "scadaDbConfig": {"url": SCADA_URL},
    "schemaConfig": {"table": "sensor_readings", "timestampColumn": "ts"},
}


@pytest.fixture
def engine(sqlite_url: str) -> Engine:
    engine = make_engine(sqlite_url)
    migrate(engine)
    return engine


def register(engine: Engine, org_id: str, keyring: Keyring) -> None:
    org = parse_org_config(ORG_DOC, org_id)
    orgs.create_org(engine, org, actor="test", now=NOW, keyring=keyring)


def stored(engine: Engine, org_id: str) -> str:
    with engine.connect() as conn:
        query = select(organizations.c.scada_url).where(organizations.c.id == org_id)
        return str(conn.execute(query).scalar_one())


def stored_config(engine: Engine, org_id: str) -> str:
    with engine.connect() as conn:
        query = select(organizations.c.config).where(organizations.c.id == org_id)
        return json.dumps(conn.execute(query).scalar_one())


def test_with_a_key_the_stored_column_is_a_token_without_the_url_or_password(
    engine: Engine,
) -> None:
    register(engine, "acme-corp", Keyring.parse(NEW))
    column = stored(engine, "acme-corp")
    assert column.startswith("enc:v1:k2:")
    assert PASSWORD not in column and "10.0.0.7" not in column and "plant" not in column
    org = orgs.get_org(engine, "acme-corp", keyring=Keyring.parse(NEW))
    assert org.resolve_scada_url() == SCADA_URL


def test_the_stored_config_and_the_audit_trail_never_hold_the_password(engine: Engine) -> None:
    keyring = Keyring.parse(NEW)
    register(engine, "acme-corp", keyring)
    orgs.update_org(
        engine, parse_org_config(ORG_DOC, "acme-corp"), actor="test", now=NOW, keyring=keyring
    )
    assert PASSWORD not in stored_config(engine, "acme-corp")
    events = audit.list_events(engine, "acme-corp")
    assert {event["event"] for event in events} >= {"organization.created", "organization.updated"}
    assert PASSWORD not in json.dumps(events, default=str)


def test_an_encrypted_url_copied_into_another_organizations_row_does_not_decrypt(
    engine: Engine,
) -> None:
    keyring = Keyring.parse(NEW)
    register(engine, "acme-corp", keyring)
    register(engine, "globex", keyring)
    with engine.begin() as conn:
        conn.execute(
            update(organizations)
            .where(organizations.c.id == "globex")
            .values(scada_url=stored(engine, "acme-corp"))
        )
    with pytest.raises(SealedDataError, match=r"organization globex.*fails authentication"):
        orgs.get_org(engine, "globex", keyring=keyring)


def test_a_process_without_the_key_is_told_which_key_it_needs(engine: Engine) -> None:
    register(engine, "acme-corp", Keyring.parse(OLD))
    with pytest.raises(SealedDataError, match=r"acme-corp.*key 'k1'.*ML_MASTER_KEYS is not set"):
        orgs.get_org(engine, "acme-corp", keyring=Keyring())
    with pytest.raises(SealedDataError, match=r"key 'k1'.*add that key back"):
        orgs.get_org(engine, "acme-corp", keyring=Keyring.parse(NEW))


def test_without_a_key_urls_are_stored_plain_with_one_warning_and_stay_readable_after_one_is_set(
    engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orgs, "_warned_plain", False)
    with caplog.at_level(logging.WARNING, logger="training_tasks.registry.orgs"):
        register(engine, "acme-corp", Keyring())
        register(engine, "globex", Keyring())
    warnings = [r.getMessage() for r in caplog.records if r.name == "training_tasks.registry.orgs"]
    assert len(warnings) == 1
    assert "stored unencrypted" in warnings[0] and "ML_MASTER_KEYS" in warnings[0]
    assert PASSWORD not in warnings[0]
    assert stored(engine, "acme-corp") == SCADA_URL
    later = orgs.get_org(engine, "acme-corp", keyring=Keyring.parse(NEW))
    assert later.resolve_scada_url() == SCADA_URL


def test_reencrypt_moves_plain_and_old_key_urls_to_the_current_key_in_one_go(
    engine: Engine,
) -> None:
    register(engine, "acme-corp", Keyring())
    register(engine, "globex", Keyring.parse(OLD))
    rotated = Keyring.parse(f"{NEW},{OLD}")
    found = orgs.reencrypt_scada_urls(engine, rotated, actor="test", now=NOW)
    assert found == {"plain": 1, "k1": 1}
    for org_id in ("acme-corp", "globex"):
        assert stored(engine, org_id).startswith("enc:v1:k2:")
        # The old key can now be dropped.
        assert orgs.get_org(engine, org_id, keyring=Keyring.parse(NEW)).scada_url == SCADA_URL
    [event] = [
        e for e in audit.list_events(engine, "globex") if e["event"] == "secrets.reencrypted"
    ]
    assert event["details"] == {"field": "scadaDbConfig.url", "from": "k1", "keyId": "k2"}


def test_reencrypt_changes_nothing_when_one_url_cannot_be_decrypted(engine: Engine) -> None:
    register(engine, "acme-corp", Keyring())
    register(engine, "globex", Keyring.parse(OLD))
    with pytest.raises(SealedDataError, match="organization globex"):
        orgs.reencrypt_scada_urls(engine, Keyring.parse(NEW), actor="test", now=NOW)
    assert stored(engine, "acme-corp") == SCADA_URL
    assert stored(engine, "globex").startswith("enc:v1:k1:")


def test_reencrypt_without_a_key_says_how_to_make_one(engine: Engine) -> None:
    with pytest.raises(SealedDataError, match="trainctl secrets new-key"):
        orgs.reencrypt_scada_urls(engine, Keyring(), actor="test", now=NOW)


# -- trainctl ------------------------------------------------------------------------------


def trainctl(tmp_path: Path, *args: str, keys: str | None) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "ML_MASTER_KEYS")
    }
    environ["ML_BASE_PATH"] = str(tmp_path / "ml")
    if keys is not None:
        environ["ML_MASTER_KEYS"] = keys
    return subprocess.run(
        [sys.executable, "-m", "training_tasks.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_trainctl_registers_plain_then_reencrypts_and_never_prints_the_password(
    tmp_path: Path,
) -> None:
    config = tmp_path / "org.json"
    config.write_text(json.dumps(ORG_DOC))
    created = trainctl(tmp_path, "org", "create", "acme-corp", "--config", str(config), keys=None)
    assert created.returncode == 0, created.stderr
    assert "stored unencrypted" in created.stderr and PASSWORD not in created.stderr
    engine = make_engine(f"sqlite:///{tmp_path / 'ml' / 'training.db'}")
    assert stored(engine, "acme-corp") == SCADA_URL

    new_key = trainctl(tmp_path, "secrets", "new-key", "--id", "k2", keys=None)
    assert new_key.returncode == 0 and new_key.stdout.startswith("k2:")
    assert "put the new entry first" in new_key.stderr
    keys = new_key.stdout.strip()
    done = trainctl(tmp_path, "secrets", "reencrypt", keys=keys)
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 1 SCADA URL(s) with key k2 (1 plain)" in done.stdout
    assert stored(engine, "acme-corp").startswith("enc:v1:k2:")

    shown = trainctl(tmp_path, "org", "show", "acme-corp", keys=keys)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["scadaDbConfig"]["url"] == SCADA_URL.replace(PASSWORD, "***")
    audit_lines = trainctl(tmp_path, "audit", "acme-corp", keys=keys)
    assert "secrets.reencrypted" in audit_lines.stdout
    for result in (shown, audit_lines, done):
        assert PASSWORD not in result.stdout + result.stderr
        assert keys.split(":")[1] not in result.stdout + result.stderr
    assert PASSWORD not in stored_config(engine, "acme-corp")

    without = trainctl(tmp_path, "org", "show", "acme-corp", keys=None)
    assert without.returncode == 1
    assert "key 'k2'" in without.stderr and "ML_MASTER_KEYS is not set" in without.stderr


def test_trainctl_refuses_a_bad_master_key_naming_the_variable_but_not_the_key(
    tmp_path: Path,
) -> None:
    bad = "k1:" + base64.b64encode(b"sixteen-byte-key").decode()
    result = trainctl(tmp_path, "org", "list", keys=bad)
    assert result.returncode == 2
    assert "ML_MASTER_KEYS" in result.stderr and "decodes to 16 bytes" in result.stderr
    assert bad.split(":")[1] not in result.stderr


# -- the training subprocess ---------------------------------------------------------------


def test_the_training_sandbox_gets_neither_the_master_keys_nor_the_scada_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ML_MASTER_KEYS", NEW)
    monkeypatch.setenv("ACME_SCADA_URL", SCADA_URL)
    env = sandbox.allowed_env()
    assert "ML_MASTER_KEYS" not in env and "ACME_SCADA_URL" not in env
    assert PASSWORD not in json.dumps(env) and NEW.split(":")[1] not in json.dumps(env)


def test_the_sandbox_refuses_the_master_keys_even_when_passed_explicitly() -> None:
    with pytest.raises(ValueError, match="looks like a secret"):
        sandbox.allowed_env({"ML_MASTER_KEYS": NEW})


def test_the_training_scripts_config_file_holds_no_scada_url(tmp_path: Path) -> None:
    org = parse_org_config(ORG_DOC, "acme-corp")
    config = resolve(None, "acme-corp", org.ml_model_config, NOW)
    doc = script_config(
        config,
        version="v2026-06-01T12-00-00-000Z_a1b2c3d4",
        train_path=tmp_path / "train.parquet",
        holdout_path=tmp_path / "holdout.parquet",
        output_dir=tmp_path,
    )
    text = json.dumps(doc)
    assert PASSWORD not in text and "10.0.0.7" not in text


def test_a_url_without_a_password_is_stored_plain_without_a_warning(
    engine: Engine, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orgs, "_warned_plain", False)
    doc = {**ORG_DOC, "scadaDbConfig": {"url": "sqlite:////srv/plant/scada.db"}}
    with caplog.at_level(logging.WARNING, logger="training_tasks.registry.orgs"):
        orgs.create_org(
            engine, parse_org_config(doc, "acme-corp"), actor="t", now=NOW, keyring=Keyring()
        )
    assert [r for r in caplog.records if r.name == "training_tasks.registry.orgs"] == []
