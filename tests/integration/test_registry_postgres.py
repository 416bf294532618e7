"""The registry contract, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.support.registry_fixtures import migrated_engine
from tests.unit.test_registry_contract import RegistryContract

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = migrated_engine(postgres_url)
    yield engine
    engine.dispose()


class TestRegistryOnPostgres(RegistryContract):
    pass
