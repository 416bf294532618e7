"""`trainctl ui`: the read-only web dashboard of the registry."""

from __future__ import annotations

import os

import click

from training_tasks.errors import ConfigError

BASIC_AUTH_ENV = "UI_BASIC_AUTH"


@click.command("ui")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (loopback by default; anything else should have --basic-auth).",
)
@click.option(
    "--port",
    default=8088,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on (0: any free port, printed at start).",
)
@click.option(
    "--basic-auth",
    "basic_auth",
    metavar="USER:PASSWORD[,...]",
    default=None,
    help=f"Ask for a login, as Flower's --basic-auth does (default: ${BASIC_AUTH_ENV}; the "
    "variable keeps the password out of the process list).",
)
def ui_command(host: str, port: int, basic_auth: str | None) -> None:
    """Serve the dashboard on http://HOST:PORT/: organizations, runs, versions, schedules.

    Organizations with their deployed version and health; per organization the runs (status,
    stage reached, duration, trigger, error), the versions with a trend chart of their
    validation metrics (the deployed one marked) and a link to each report, and the schedule
    with its next runs. Read from DATABASE_URL and ML_BASE_PATH (with MODEL_STORE_URL set, a
    report not in ML_BASE_PATH is fetched there from the store); it changes no record. Stop it
    with Ctrl-C.
    """
    from training_tasks.cli.common import cli_settings

    # Tornado and SQLAlchemy: loaded for this command only, not for `trainctl --help`.
    from training_tasks.db.engine import make_engine
    from training_tasks.protocol.object_store import open_store
    from training_tasks.protocol.paths import ModelStore
    from training_tasks.runtime import utc_now
    from training_tasks.ui.app import Dashboard, parse_basic_auth
    from training_tasks.ui.server import DashboardServer, is_loopback

    # Spelt out (not BASIC_AUTH_ENV) so that tests/unit/test_compose.py finds where it is read.
    spec = basic_auth if basic_auth is not None else os.environ.get("UI_BASIC_AUTH", "")
    try:
        credentials = parse_basic_auth(spec)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--basic-auth / UI_BASIC_AUTH") from None
    settings = cli_settings()
    engine = make_engine(settings.database_url)
    store = ModelStore(settings.ml_base_path, open_store(settings.model_store_url))
    dash = Dashboard(engine, store, utc_now, credentials)
    try:
        server = DashboardServer(dash, host, port)
    except OSError as exc:
        dash.close()
        engine.dispose()
        raise click.UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host"
        ) from None
    if not credentials and not is_loopback(host):
        click.echo(
            f"warning: {host} is reachable from other machines and no login is asked; "
            f"set {BASIC_AUTH_ENV}=USER:PASSWORD",
            err=True,
        )
    database = engine.url.render_as_string(hide_password=True)
    click.echo(f"dashboard of {database} on {server.url}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        dash.close()
        engine.dispose()
