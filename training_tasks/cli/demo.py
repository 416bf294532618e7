"""`make run` (`trainctl demo`): the whole job on the embedded default, started and stopped in
one command.

An embedded Redis (unless REDIS_URL is set), SQLite under ML_BASE_PATH (unless DATABASE_URL
is set), demo SCADA databases for four organizations (SQLite files, or tables in the PostgreSQL
database of `--scada-url`), a real Celery worker process, trainings at once with live progress,
and a table of what was deployed. `--load-only` stops after loading the data and registering the
organizations, for a worker and `trainctl train` of one's own. `initech`'s failures are rare and
show only in the ratio of two sensors: it is trained first as a user would first try (raw
columns, threshold 0.5), which validation rejects, then with `pressure / temperature` as a
derived feature and the threshold of the best F1 on the inner fold, which passes. `vandelay`'s
failures are events in a maintenance log, preceded by hours of drift that one reading cannot
tell from a busy machine: it is trained on single readings, then on six-hour windows, and the
two are compared on the failures they catch at the same false-alarm rate.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from training_tasks.cli.views import console, follow_runs, print_deployed
from training_tasks.config.settings import Settings
from training_tasks.config.window_features import check_windows
from training_tasks.demo import events, scada
from training_tasks.demo.child_process import die_with_parent
from training_tasks.demo.embedded_redis import EmbeddedRedis
from training_tasks.demo.event_comparison import (
    EventScore,
    Holdout,
    at_false_alarm_rate,
    recorded_scope,
    recorded_score,
)
from training_tasks.demo.orgs import DEMO_START as DEMO_START  # what tests start data at
from training_tasks.demo.orgs import EVENT_ORG, RARE_ORG, prepare_demo_orgs
from training_tasks.demo.postgres import DemoLoadError, is_postgres_url
from training_tasks.files import UnsafeFile
from training_tasks.messaging.broker import WorkerProbe
from training_tasks.redaction import mask_url
from training_tasks.service.api import TrainingService
from training_tasks.stages.validate.event_checks import read_events
from workers.prediction_service import PredictionService

DEMO_DAYS = 120
DEMO_ASSETS = 24
WORKER_READY_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 20.0
SWAP_WAIT_S = 10.0
DASHBOARD_PORT = 8088  # trainctl ui's default
# One sensor reading in the demo's feature order: temperature, pressure, vibration, current.
DEMO_ROW = [63.0, 415.0, 2.4, 32.5]
TYPICAL = dict(zip(scada.FEATURES, DEMO_ROW, strict=True))
# The rare-failure organization trained as a user would first try: raw columns, the default 0.5.
RAW_REQUEST: dict[str, Any] = {
    "derivedFeatures": {},
    "decisionPolicy": {"type": "fixed", "threshold": 0.5},
}
# The event-labelled organization (demo/events.py) trained first on single readings.
SINGLE_READINGS: dict[str, Any] = {"windows": None}
FIRST_TRY = {RARE_ORG: RAW_REQUEST, EVENT_ORG: SINGLE_READINGS}


def run_demo(
    *,
    keep_running: bool = False,
    assets: int = DEMO_ASSETS,
    days: int = DEMO_DAYS,
    scada_url: str | None = None,
    load_only: bool = False,
) -> int:
    """Run the demo end to end; returns the process exit code (0 if every org deployed).

    `scada_url` (PostgreSQL) receives the demo SCADA tables instead of SQLite files under
    ML_BASE_PATH/demo; with `load_only` the demo loads the data, registers the organizations
    and stops there.
    """

    base = Path(os.environ.get("ML_BASE_PATH") or "./ml").resolve()
    if scada_url is not None and not is_postgres_url(scada_url):
        console.print(
            f"[red]--scada-url {mask_url(scada_url)} is not a PostgreSQL URL "
            "(postgresql+psycopg://USER@HOST:PORT/DATABASE); without --scada-url the demo "
            "writes SQLite files under ML_BASE_PATH/demo[/]"
        )
        return 2
    if load_only and keep_running:
        console.print("[red]--keep-running keeps the demo's worker; --load-only starts none[/]")
        return 2
    if load_only:
        os.environ.setdefault("ML_BASE_PATH", str(base))
        return _load_only(base, assets, days, scada_url)
    # SIGTERM or a closed terminal unwinds like Ctrl-C, so the worker and Redis are stopped.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    with _embedded_redis_unless_set(base) as redis_url:
        os.environ["REDIS_URL"] = redis_url
        os.environ.setdefault("ML_BASE_PATH", str(base))
        settings = Settings.from_env()
        console.print(
            f"[bold]Redis[/] {redis_url}   [bold]database[/] {mask_url(settings.database_url)}"
        )

        svc = TrainingService()
        try:
            orgs = _prepare(svc, base / "demo", assets, days, scada_url)
        except DemoLoadError as exc:
            console.print(f"[red]{exc}[/]")
            return 1
        with _worker(settings, base / "demo" / "worker.log") as worker:
            _wait_for_worker(worker, settings.broker_url)
            return _train_all(svc, orgs, settings, keep_running)


def _load_only(base: Path, assets: int, days: int, scada_url: str | None) -> int:
    """Load the demo data and register the organizations; start nothing."""
    settings = Settings.from_env()
    console.print(f"[bold]database[/] {mask_url(settings.database_url)}")
    try:
        orgs = _prepare(TrainingService(), base / "demo", assets, days, scada_url)
    except DemoLoadError as exc:
        console.print(f"[red]{exc}[/]")
        return 1
    console.print(
        f"ready: {', '.join(orgs)}; with a worker running, train one with "
        f"`trainctl train {orgs[0]} --wait`; see its config with `trainctl org show {orgs[0]}`"
    )
    return 0


def _train_all(svc: Any, orgs: list[str], settings: Settings, keep_running: bool) -> int:

    def submit(org: str, **request: Any) -> Any:
        # No dataRange: each organization's own window, as `trainctl train ORG` would use it.
        return svc.train_model(org, request, wait=False, trigger="demo", actor="demo")

    with PredictionService(settings.redis_url, settings.ml_base_path, orgs, port=0) as prediction:
        console.print(f"prediction service on http://127.0.0.1:{prediction.port}")
        for org in orgs:
            console.print(f"  {org}: before training, {_ask(prediction.port, org)}")
        # First round: the two drift organizations, and the two others as a user would first try.
        handles = [submit(org, **FIRST_TRY.get(org, {})) for org in orgs]
        console.print(
            f"submitted {len(handles)} trainings: "
            + ", ".join(f"{h.version} ({h.queue})" for h in handles)
        )
        results = follow_runs(handles, timeout_s=1800)
        first = {r["organizationId"]: r for r in results if r["organizationId"] in FIRST_TRY}
        console.print(
            f"{RARE_ORG} on raw columns at threshold 0.5: {first[RARE_ORG]['status']}; now with "
            "pressure / temperature as a derived feature and the threshold of the best F1"
        )
        spec = events.WINDOWS
        console.print(
            f"{EVENT_ORG} on single readings: {first[EVENT_ORG]['status']}; now on windows of "
            f"{spec['length']} x {spec['interval']} of {' and '.join(spec['columns'])}"
        )
        second = follow_runs([submit(org) for org in FIRST_TRY], timeout_s=1800)
        results = [r for r in results if r["organizationId"] not in FIRST_TRY] + second
        print_deployed([*results, *first.values()], str(settings.ml_base_path))
        for result in results:
            _report(svc, prediction, result)
    windowed = next(r for r in second if r["organizationId"] == EVENT_ORG)
    _compare_events(svc, first[EVENT_ORG], windowed)
    for org in orgs:
        state = svc.get_organization(org)
        if state["previousVersion"]:
            console.print(
                f"  {org}: previous version {state['previousVersion']} stays deployable for rollback"
            )
    if keep_running:
        _keep_running(svc)
    return 0 if all(r["success"] for r in results) else 1


def _keep_running(svc: Any) -> None:
    """Serve the dashboard on loopback until Ctrl-C; its address is the last line printed."""
    from training_tasks.ui.app import Dashboard  # Tornado: only when kept running
    from training_tasks.ui.server import DashboardServer

    dash = Dashboard(svc.rt.engine, svc.rt.store, svc.rt.now)
    try:
        server = DashboardServer(dash, "127.0.0.1", DASHBOARD_PORT)
    except OSError:  # 8088 is taken (another dashboard?): any free port, printed below
        server = DashboardServer(dash, "127.0.0.1", 0)
    with server, contextlib.suppress(KeyboardInterrupt):
        console.print("worker keeps running; press Ctrl-C to stop")
        console.print(f"[bold]dashboard[/] {server.url}")
        while True:
            time.sleep(1)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _report(svc: Any, prediction: Any, result: dict[str, Any]) -> None:
    """Where the deployed files are, and the prediction service answering with the new model."""

    org, version = result["organizationId"], result["version"]
    if not result["success"]:
        console.print(f"  [red]{org}: {result['status']}: {result['error']}[/]")
        return
    console.print(f"  {org}  model      {svc.rt.store.deployed_model(org, version)}")
    console.print(f"  {' ' * len(org)}  artifacts  {svc.rt.store.artifacts(org, version)}")
    deadline = time.monotonic() + SWAP_WAIT_S
    while prediction.cache.version(org) != version and time.monotonic() < deadline:
        time.sleep(0.01)
    console.print(f"  {' ' * len(org)}  after the deploy, {_ask(prediction.port, org)}")


def _ask(port: int, org_id: str) -> str:
    """One prediction request to the reference service, of what the model takes, in words."""

    base = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(f"{base}/models/{org_id}", timeout=5) as response:
            model = json.loads(response.read())
        window = model.get("window")
        if window is None:
            body: dict[str, Any] = {"rows": [[TYPICAL[c] for c in model["featureColumns"]]]}
        else:
            shape = (window["columns"], window["length"], window["intervalSeconds"])
            body = {"windows": events.example_windows(*shape)}
        request = urllib.request.Request(
            f"{base}/predict/{org_id}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            doc = json.loads(response.read())
    except urllib.error.HTTPError as err:
        return f"the prediction service answers {err.code}: {json.loads(err.read())['error']}"
    steady, *climbing = doc["probabilities"]
    answer = f"a request is answered by {doc['version']} (failure probability {steady:.3f}"
    if climbing:
        hours = window["length"] * window["intervalSeconds"] / 3600
        answer += f" for {hours:g} steady hours, {climbing[0]:.3f} for {hours:g} climbing ones"
    return answer + ")"


def _compare_events(svc: Any, single: dict[str, Any], windowed: dict[str, Any]) -> None:
    """What the two models of the event-labelled organization did about the holdout's failures,
    as validation recorded it, and the single-reading one again at the windows' false-alarm rate."""
    versions = {v["version"]: v for v in svc.list_versions(EVENT_ORG, limit=20)}
    window_score, single_score = (
        recorded_score((versions.get(run["version"]) or {}).get("metrics") or {})
        for run in (windowed, single)
    )
    if window_score is None or single_score is None:
        console.print(f"{EVENT_ORG}: event metrics are not recorded for both models: no comparison")
        return
    console.print(
        f"{EVENT_ORG}: the {window_score.total} failures of the holdout, each model at its own "
        "threshold (validation's event metrics):"
    )
    hours = check_windows(events.WINDOWS, "windows").span_s / 3600
    console.print(f"  {f'{hours:g} h windows':<16} {_score_words(window_score)}")
    console.print(f"  {'single readings':<16} {_score_words(single_score)}")
    rate = window_score.false_alarms_per_asset_day
    same = None if rate is None else _at_rate(svc, single, versions.get(single["version"]), rate)
    if same is not None:
        console.print(f"  single readings at the windows' false-alarm rate: {_score_words(same)}")
        console.print(
            "  (one threshold gives each model its own false-alarm rate; this one is chosen on "
            "the single-reading model's holdout scores to raise no more false alarms than the "
            "windows)"
        )


def _at_rate(
    svc: Any, run: dict[str, Any], version: dict[str, Any] | None, rate: float
) -> EventScore | None:
    """The single-reading model of `run` on its holdout at `rate` false alarms per asset-day."""
    scope = recorded_scope(svc.rt.store.artifacts(EVENT_ORG, run["version"]))
    holdout = (run.get("data") or {}).get("holdoutPath")
    if version is None or scope is None or holdout is None:
        return None
    columns = (run["config"]["featureColumns"], run["config"]["targetColumn"])
    try:
        scored = Holdout(Path(holdout), Path(version["modelPath"]), *columns).scored()
        return at_false_alarm_rate(rate, scored, read_events(scope.events_path), scope)
    except (OSError, ValueError, KeyError, pa.ArrowException, UnsafeFile) as exc:
        console.print(f"  (the single-reading model cannot be scored again on its holdout: {exc})")
        return None


def _score_words(score: EventScore | None) -> str:
    if score is None:
        return "-"
    lead = "-" if score.lead_h is None else f"{score.lead_h:.1f} h"
    rate = score.false_alarms_per_asset_day
    threshold = "no alarm" if score.threshold is None else f"threshold {score.threshold:.2f}"
    return (
        f"caught {score.caught} of {score.total}, median lead {lead}, "
        f"{'-' if rate is None else f'{rate:.3f}'} false alarms per asset-day ({threshold})"
    )


def _prepare(svc: Any, demo_dir: Path, assets: int, days: int, scada_url: str | None) -> list[str]:
    """The demo organizations' data and registrations, told on the console."""
    return prepare_demo_orgs(
        svc, demo_dir, assets, days, scada_url, say=console.print, busy=console.status
    )


@contextlib.contextmanager
def _embedded_redis_unless_set(base: Path) -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return

    with EmbeddedRedis() as server:
        yield server.url


@contextlib.contextmanager
def _worker(settings: Settings, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker process with two slots; stopped (by its PID) on the way out."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "training_tasks",
        "worker",
        "--concurrency",
        "2",
        "--loglevel",
        "INFO",
        "--hostname",
        worker_name(),
    ]
    with open(log_path, "ab") as log:
        # Two trainings share the cores: one OpenMP thread each, or they slow each other down.
        env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2)), **os.environ}
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
        )
    try:
        yield proc
    finally:
        _stop(proc)


def worker_name() -> str:
    """This demo's worker node name, so readiness is asked of our worker and no other."""

    return f"demo-{os.getpid()}@{socket.gethostname()}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _wait_for_worker(proc: subprocess.Popen[bytes], broker_url: str) -> None:

    probe = WorkerProbe(broker_url)
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    with console.status("starting a Celery worker"):
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the worker exited with code {proc.returncode}; see ml/demo/worker.log"
                    )
                if probe.answers(worker_name(), timeout_s=0.5):
                    console.print(f"worker {proc.pid} is up")
                    return
            raise RuntimeError(
                f"the worker did not answer within {WORKER_READY_TIMEOUT_S} s; see ml/demo/worker.log"
            )
        finally:
            probe.close()
