"""Master keys and authenticated encryption: round trips, tampering, bindings, rotation, parsing."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from training_tasks.config.settings import Settings
from training_tasks.errors import SettingsError
from training_tasks.protocol.keyring import (
    MODEL_MAGIC,
    Keyring,
    SealedDataError,
    generate_key,
    is_encrypted_text,
    is_sealed,
    parse_master_keys,
)

ORG, OTHER_ORG = "acme-corp", "globex"
VERSION = "v2026-06-01T12-00-00-000Z_a1b2c3d4"
OTHER_VERSION = "v2026-06-02T12-00-00-000Z_0badf00d"
ONNX_BYTES = b"\x08\x08\x12\x07onnx-ish model bytes" * 100
OLD = "k1:" + base64.b64encode(b"\x01" * 32).decode()
NEW = "k2:" + base64.b64encode(b"\x02" * 32).decode()


def keyring(*entries: str) -> Keyring:
    return Keyring.parse(",".join(entries))


# -- secrets --------------------------------------------------------------------------------


def test_a_secret_round_trips_and_its_token_does_not_contain_it() -> None:
    ring = keyring(NEW)
    token = ring.encrypt_text("postgresql://u:hunter2@db/plant", "scada_url:acme-corp")
    assert token.startswith("enc:v1:k2:") and is_encrypted_text(token)
    assert "hunter2" not in token
    assert ring.decrypt_text(token, "scada_url:acme-corp") == "postgresql://u:hunter2@db/plant"


def test_the_same_secret_encrypts_differently_every_time() -> None:
    ring = keyring(NEW)
    assert ring.encrypt_text("x", "a") != ring.encrypt_text("x", "a")


def test_a_secret_copied_to_another_record_does_not_decrypt() -> None:
    ring = keyring(NEW)
    token = ring.encrypt_text("secret", "scada_url:acme-corp")
    with pytest.raises(SealedDataError, match="fails authentication"):
        ring.decrypt_text(token, "scada_url:globex")


def test_a_changed_secret_token_is_refused() -> None:
    ring = keyring(NEW)
    prefix, body = ring.encrypt_text("secret", "a").rsplit(":", 1)
    raw = bytearray(base64.urlsafe_b64decode(body))
    for index in (0, 12, len(raw) - 1):  # the nonce, the ciphertext, the tag
        damaged = bytearray(raw)
        damaged[index] ^= 0x01
        flipped = f"{prefix}:{base64.urlsafe_b64encode(bytes(damaged)).decode()}"
        with pytest.raises(SealedDataError, match="fails authentication"):
            ring.decrypt_text(flipped, "a")
    with pytest.raises(SealedDataError, match="fails authentication"):
        ring.decrypt_text(f"{prefix}:not*base64", "a")


def test_a_secret_under_a_key_no_longer_listed_names_that_key() -> None:
    token = keyring(OLD).encrypt_text("secret", "a")
    with pytest.raises(SealedDataError, match=r"key 'k1'.*lists k2.*add that key back"):
        keyring(NEW).decrypt_text(token, "a")
    with pytest.raises(SealedDataError, match="ML_MASTER_KEYS is not set"):
        Keyring().decrypt_text(token, "a")


def test_encrypting_without_a_key_says_how_to_set_one() -> None:
    with pytest.raises(SettingsError, match=r"ML_MASTER_KEYS: is not set.*new-key"):
        Keyring().encrypt_text("secret", "a")


# -- model files ----------------------------------------------------------------------------


def test_a_sealed_model_opens_to_the_same_bytes_and_hides_them() -> None:
    ring = keyring(NEW)
    sealed = ring.seal_model(ONNX_BYTES, ORG, VERSION)
    assert sealed.startswith(MODEL_MAGIC + b"k2\n") and is_sealed(sealed)
    assert b"onnx-ish" not in sealed
    assert len(sealed) == len(ONNX_BYTES) + len(MODEL_MAGIC) + 3 + 12 + 16
    assert ring.open_model(sealed, ORG, VERSION) == ONNX_BYTES


def test_a_plain_model_passes_through_unchanged_with_or_without_keys() -> None:
    assert not is_sealed(ONNX_BYTES)
    assert keyring(NEW).open_model(ONNX_BYTES, ORG, VERSION) is ONNX_BYTES
    assert Keyring().open_model(ONNX_BYTES, ORG, VERSION) is ONNX_BYTES


@pytest.mark.parametrize(("org", "version"), [(OTHER_ORG, VERSION), (ORG, OTHER_VERSION)])
def test_a_model_sealed_for_one_org_and_version_does_not_open_as_another(
    org: str, version: str
) -> None:
    ring = keyring(NEW)
    sealed = ring.seal_model(ONNX_BYTES, ORG, VERSION)
    with pytest.raises(SealedDataError) as caught:
        ring.open_model(sealed, org, version)
    message = str(caught.value)
    assert f"organization {org} version {version}" in message
    assert "sealed for another organization or version" in message


def test_a_changed_byte_anywhere_in_a_sealed_model_is_detected() -> None:
    ring = keyring(NEW)
    sealed = bytearray(ring.seal_model(ONNX_BYTES, ORG, VERSION))
    for index in (len(MODEL_MAGIC) + 3, len(sealed) // 2, len(sealed) - 1):
        damaged = bytearray(sealed)
        damaged[index] ^= 0x01
        with pytest.raises(SealedDataError):
            ring.open_model(bytes(damaged), ORG, VERSION)


def test_a_truncated_or_garbled_header_is_reported_as_damaged() -> None:
    ring = keyring(NEW)
    with pytest.raises(SealedDataError, match="damaged encryption header"):
        ring.open_model(MODEL_MAGIC + b"k2\n" + b"short", ORG, VERSION)
    with pytest.raises(SealedDataError, match="damaged encryption header"):
        ring.open_model(MODEL_MAGIC + b"no newline in a long key id area" * 3, ORG, VERSION)


def test_a_sealed_model_without_keys_names_the_org_version_and_the_fix() -> None:
    sealed = keyring(NEW).seal_model(ONNX_BYTES, ORG, VERSION)
    with pytest.raises(SealedDataError) as caught:
        Keyring().open_model(sealed, ORG, VERSION)
    message = str(caught.value)
    assert ORG in message and VERSION in message and "set it" in message
    assert "ML_MASTER_KEYS" in message


def test_seal_file_replaces_a_plain_file_in_place_and_is_idempotent(tmp_path: Path) -> None:
    ring = keyring(NEW)
    path = tmp_path / "model.onnx"
    path.write_bytes(ONNX_BYTES)
    ring.seal_file(path, ORG, VERSION)
    sealed = path.read_bytes()
    assert is_sealed(sealed)
    ring.seal_file(path, ORG, VERSION)
    assert path.read_bytes() == sealed
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


# -- rotation -------------------------------------------------------------------------------


def test_after_rotation_new_data_uses_the_new_key_and_old_data_still_opens() -> None:
    sealed_old = keyring(OLD).seal_model(ONNX_BYTES, ORG, VERSION)
    token_old = keyring(OLD).encrypt_text("secret", "a")
    rotated = keyring(NEW, OLD)
    assert rotated.current is not None and rotated.current.key_id == "k2"
    assert rotated.open_model(sealed_old, ORG, VERSION) == ONNX_BYTES
    assert rotated.decrypt_text(token_old, "a") == "secret"
    assert rotated.seal_model(ONNX_BYTES, ORG, VERSION).startswith(MODEL_MAGIC + b"k2\n")


def test_once_the_old_key_is_dropped_its_models_are_refused_naming_it() -> None:
    sealed_old = keyring(OLD).seal_model(ONNX_BYTES, ORG, VERSION)
    with pytest.raises(SealedDataError, match=r"key 'k1'.*add that key back to ML_MASTER_KEYS"):
        keyring(NEW).open_model(sealed_old, ORG, VERSION)


def test_a_key_id_names_the_key_not_its_position() -> None:
    sealed = keyring(OLD).seal_model(ONNX_BYTES, ORG, VERSION)
    same_bytes_other_id = "k9:" + OLD.split(":", 1)[1]
    with pytest.raises(SealedDataError, match="key 'k1'"):
        keyring(same_bytes_other_id).open_model(sealed, ORG, VERSION)


# -- parsing ML_MASTER_KEYS -----------------------------------------------------------------

SECRET_B64 = base64.b64encode(b"\x07" * 32).decode()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("k1:" + base64.b64encode(b"\x07" * 16).decode(), "decodes to 16 bytes"),
        ("k1:" + SECRET_B64[:-4] + "!!!!", "not valid base64"),
        (f"k1:{SECRET_B64},k1:{SECRET_B64}", "k1 is listed twice"),
        (f"k1:{SECRET_B64},", "entry 2 of 2 is empty"),
        (SECRET_B64, "entry 1 of 1 is not keyid:base64key"),
        (f"bad id:{SECRET_B64}", "is not keyid:base64key"),
        (f"k1\n:{SECRET_B64}", "is not keyid:base64key"),
    ],
)
def test_a_bad_master_key_list_is_refused_naming_the_variable_and_never_the_key(
    raw: str, problem: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_master_keys(raw)
    message = str(caught.value)
    assert message.startswith("ML_MASTER_KEYS: ")
    assert problem in message
    assert SECRET_B64[:16] not in message and SECRET_B64[-16:-4] not in message


def test_settings_refuse_a_bad_key_at_start_up_and_never_show_a_good_one() -> None:
    with pytest.raises(SettingsError, match="ML_MASTER_KEYS"):
        Settings.from_env({"ML_MASTER_KEYS": "k1:short"})
    settings = Settings.from_env({"ML_MASTER_KEYS": NEW})
    assert settings.master_keys == NEW
    assert NEW.split(":")[1] not in repr(settings)
    assert Settings.from_env({"ML_MASTER_KEYS": ""}).master_keys is None


def test_a_keyring_repr_shows_key_ids_only() -> None:
    ring = keyring(NEW, OLD)
    assert repr(ring) == "Keyring(key_ids=['k2', 'k1'])"
    assert NEW.split(":")[1] not in repr(ring.current)


def test_urlsafe_base64_keys_are_accepted() -> None:
    raw = base64.urlsafe_b64encode(bytes(range(200, 232))).decode()
    assert "-" in raw or "_" in raw
    [key] = parse_master_keys(f"k1:{raw}")
    assert key.secret == bytes(range(200, 232))


def test_generated_keys_parse_and_differ() -> None:
    first, second = generate_key(), generate_key("ops-2026")
    assert second.startswith("ops-2026:")
    keys = parse_master_keys(f"{first},{second}")
    assert len(keys) == 2 and keys[0].secret != keys[1].secret
    with pytest.raises(ValueError, match="not a key id"):
        generate_key("has space")


def test_from_env_reads_ml_master_keys_and_an_unset_variable_gives_no_keys() -> None:
    assert Keyring.from_env({"ML_MASTER_KEYS": f"{NEW},{OLD}"}).key_ids == ["k2", "k1"]
    assert not Keyring.from_env({}).enabled
