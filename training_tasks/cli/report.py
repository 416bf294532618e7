"""`trainctl report`: the path of a model version's report.html, or the report opened."""

from __future__ import annotations

import webbrowser

import click

from training_tasks.cli.common import cli_settings


@click.command("report")
@click.argument("org_id")
@click.argument("version", required=False)
@click.option("--compare", metavar="VERSION", help="Build the report against this other version.")
@click.option("--rebuild", is_flag=True, help="Build the report again from the artifacts.")
@click.option("--open", "open_it", is_flag=True, help="Open the report in the web browser.")
def report_command(
    org_id: str, version: str | None, compare: str | None, rebuild: bool, open_it: bool
) -> None:
    """Print the path of VERSION's report (default: ORG_ID's newest validated version).

    The validate stage writes artifacts/<org>/<version>/report.html: the verdict and every check,
    the holdout curves (over the deployed model's), feature importance and the data with its
    drift. A missing report is built again from the version's artifacts; with --compare the
    report is built against that version as report-vs-<VERSION>.html.
    """
    from training_tasks.runtime import build_runtime  # SQLAlchemy: not for --help
    from training_tasks.service.reports import ReportApi

    runtime = build_runtime(cli_settings())
    try:
        path = ReportApi(runtime).report_path(org_id, version, compare=compare, rebuild=rebuild)
    finally:
        runtime.close()
    click.echo(str(path))
    if open_it and not webbrowser.open(path.resolve().as_uri()):
        raise click.ClickException(f"no web browser could be started; open {path} yourself")
