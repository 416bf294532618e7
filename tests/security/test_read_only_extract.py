"""The extract reads the organization's SCADA database through a read-only connection."""

from __future__ import annotations

import adbc_driver_postgresql.dbapi as adbc
import pytest
from sqlalchemy.engine import make_url

from training_tasks.stages.extract.source import _libpq_uri

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_the_extract_connection_cannot_write_to_the_scada_database(postgres_url: str) -> None:
    uri = _libpq_uri(make_url(postgres_url), connect_timeout_s=5)
    with adbc.connect(uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        with pytest.raises(adbc.Error, match="read-only transaction"):
            cur.execute("CREATE TABLE planted (x int)")


def test_a_users_own_libpq_options_are_kept_alongside_read_only(postgres_url: str) -> None:
    url = make_url(postgres_url).update_query_dict({"options": "-c statement_timeout=5000"})
    uri = _libpq_uri(url, connect_timeout_s=5)
    with adbc.connect(uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('statement_timeout')")
        assert cur.fetchone()[0] == "5s"
        cur.execute("SELECT current_setting('default_transaction_read_only')")
        assert cur.fetchone()[0] == "on"
