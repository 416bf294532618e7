"""The hot-swap message: the JSON other services parse, and what they must refuse."""

import json

import pytest

from training_tasks.protocol import hotswap

DEPLOYMENT = hotswap.Deployment(
    organizationId="acme-corp",
    version="v2024-01-15T10-30-00-000Z_a1b2c3d4",
    modelPath="/ml/models/acme-corp/deployed_v2024-01-15T10-30-00-000Z_a1b2c3d4/model.onnx",
    sha256="0" * 64,
    deployedAt="2024-01-15T10:30:00Z",
    sequence=3,
)


def test_key_and_channel_names_follow_the_contract() -> None:
    assert hotswap.current_key("acme-corp") == "ml:model:acme-corp:current"
    assert hotswap.channel("acme-corp") == "ml:models:acme-corp"


def test_the_message_is_the_key_value_plus_an_event() -> None:
    key_value = json.loads(DEPLOYMENT.to_json())
    message = json.loads(DEPLOYMENT.to_json("rolled_back"))
    assert message == {**key_value, "event": "rolled_back"}
    assert set(key_value) == {
        "organizationId",
        "version",
        "modelPath",
        "sha256",
        "deployedAt",
        "sequence",
    }


def test_parse_round_trips_both_forms() -> None:
    assert hotswap.parse(DEPLOYMENT.to_json()) == (None, DEPLOYMENT)
    assert hotswap.parse(DEPLOYMENT.to_json("deployed").encode()) == ("deployed", DEPLOYMENT)


@pytest.mark.parametrize(
    "raw",
    [
        "[]",
        json.dumps({"organizationId": "acme-corp"}),
        json.dumps({**json.loads(DEPLOYMENT.to_json()), "sequence": "3"}),
        json.dumps({**json.loads(DEPLOYMENT.to_json()), "event": "exploded"}),
    ],
)
def test_a_malformed_message_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        hotswap.parse(raw)
