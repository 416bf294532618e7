"""Alembic environment: runs on the engine handed over in config.attributes, or DATABASE_URL."""

from alembic import context

from training_tasks.db.tables import metadata

config = context.config


def run() -> None:
    engine = config.attributes.get("engine")
    if engine is None:  # alembic run by hand: the service handed over no engine
        from training_tasks.config.settings import Settings
        from training_tasks.db.engine import make_engine

        engine = make_engine(Settings.from_env().database_url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run()
