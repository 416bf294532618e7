"""`trainctl db`: create and migrate the service database."""

from __future__ import annotations

import click

from training_tasks.cli.common import cli_settings
from training_tasks.redaction import mask_url


@click.group()
def db() -> None:
    """Manage the service database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create the database if it is missing, then apply the migrations (safe to run again).

    A PostgreSQL database that does not exist yet is created through the server's `postgres`
    database with the same credentials; if that user may not, the error says how to create it.
    """
    from training_tasks.db.bootstrap import create_database_if_missing  # SQLAlchemy, Alembic
    from training_tasks.db.engine import make_engine, migrate

    settings = cli_settings()
    database = mask_url(settings.database_url)
    if create_database_if_missing(settings.database_url):
        click.echo(f"created the database {database}")
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    click.echo(f"the schema of {database} is up to date")
