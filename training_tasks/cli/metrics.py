"""`trainctl metrics`: the service's Prometheus metrics, read from the database, on /metrics."""

from __future__ import annotations

import click


@click.command("metrics")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."
)
@click.option(
    "--port",
    default=9808,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on (0: any free port, printed at start).",
)
def metrics_command(host: str, port: int) -> None:
    """Serve the service's metrics for Prometheus on http://HOST:PORT/metrics.

    Runs by organization and status (training_runs, training_runs_active), the last successful
    run (training_last_success_timestamp_seconds), deployments and rollbacks
    (model_deployments_total), the deployed version (model_deployed_info) and its holdout AUC,
    precision and recall (model_deployed_holdout_*), schedule slots (schedule_slots_total) and
    durations of finished runs (training_run_seconds), read from DATABASE_URL at each scrape.
    Worker and task metrics are Flower's /metrics. Stop it with Ctrl-C.
    """
    from training_tasks.cli.common import cli_settings

    # SQLAlchemy and prometheus_client: loaded for this command only, not for `trainctl --help`.
    from training_tasks.db.engine import make_engine
    from training_tasks.registry.metrics import make_metrics_server

    settings = cli_settings()
    engine = make_engine(settings.database_url)
    try:
        server = make_metrics_server(host, port, engine)
    except OSError as exc:
        raise click.UsageError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port"
        ) from None
    database = engine.url.render_as_string(hide_password=True)
    click.echo(f"metrics of {database} on http://{host}:{server.server_port}/metrics", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.dispose()
