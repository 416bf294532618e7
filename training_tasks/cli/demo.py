"""`make run` (`trainctl demo`): the whole job on the embedded default, started and stopped in
one command.

An embedded Redis (unless REDIS_URL is set), SQLite under ML_BASE_PATH (unless DATABASE_URL
is set), demo SCADA databases for three organizations (SQLite files, or tables in the PostgreSQL
database of `--scada-url`), a real Celery worker process, trainings at once with live progress,
and a table of what was deployed. `--load-only` stops after loading the data and registering the
organizations, for a worker and `trainctl train` of one's own. `initech`'s failures are rare and
show only in the ratio of two sensors: it is trained first as a user would first try (raw
columns, threshold 0.5), which validation rejects, then with `pressure / temperature` as a
derived feature and the threshold of the best F1 on the inner fold, which passes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from training_tasks.cli.views import console, follow_runs, print_deployed
from training_tasks.config.org import parse_org_config
from training_tasks.config.settings import Settings
from training_tasks.demo import scada
from training_tasks.demo.child_process import die_with_parent
from training_tasks.demo.embedded_redis import EmbeddedRedis
from training_tasks.demo.postgres import (
    DemoLoadError,
    ensure_database,
    is_postgres_url,
    load_demo_table,
)
from training_tasks.errors import NotFoundError
from training_tasks.messaging.broker import WorkerProbe
from training_tasks.redaction import mask_url
from training_tasks.service.api import TrainingService
from workers.prediction_service import PredictionService

DEMO_START = datetime(2026, 1, 1, tzinfo=UTC)
DEMO_DAYS = 120
DEMO_ASSETS = 24
WORKER_READY_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 20.0
SWAP_WAIT_S = 10.0
DASHBOARD_PORT = 8088  # trainctl ui's default
# One sensor reading in the demo's feature order: temperature, pressure, vibration, current.
DEMO_ROW = [63.0, 415.0, 2.4, 32.5]
# Rare failures that only pressure / temperature shows (see scada.iter_rare_failure_frames).
RARE_ORG = "initech"
RARE_DAYS = 60
RARE_ASSETS = 8
# The same organization trained as a user would first try: raw columns, the default 0.5.
RAW_REQUEST: dict[str, Any] = {
    "derivedFeatures": {},
    "decisionPolicy": {"type": "fixed", "threshold": 0.5},
}
DEMO_LAYOUTS = {
    "acme-corp": scada.ACME_LAYOUT,
    "globex": scada.GLOBEX_LAYOUT,
    RARE_ORG: scada.INITECH_LAYOUT,
}


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
            orgs = _prepare_demo_orgs(svc, base / "demo", assets, days, scada_url)
        except DemoLoadError as exc:
            console.print(f"[red]{exc}[/]")
            return 1
        with _worker(settings, base / "demo" / "worker.log") as worker:
            _wait_for_worker(worker, settings.redis_url)
            return _train_all(svc, orgs, settings, keep_running)


def _load_only(base: Path, assets: int, days: int, scada_url: str | None) -> int:
    """Load the demo data and register the organizations; start nothing."""
    settings = Settings.from_env()
    console.print(f"[bold]database[/] {mask_url(settings.database_url)}")
    try:
        orgs = _prepare_demo_orgs(TrainingService(), base / "demo", assets, days, scada_url)
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
        # First round: the two drift organizations, and the rare-failure one on raw columns.
        handles = [submit(org, **(RAW_REQUEST if org == RARE_ORG else {})) for org in orgs]
        console.print(
            f"submitted {len(handles)} trainings: "
            + ", ".join(f"{h.version} ({h.queue})" for h in handles)
        )
        results = follow_runs(handles, timeout_s=1800)
        raw = next(r for r in results if r["organizationId"] == RARE_ORG)
        console.print(
            f"{RARE_ORG} on raw columns at threshold 0.5: {raw['status']}; now with "
            "pressure / temperature as a derived feature and the threshold of the best F1"
        )
        tuned = follow_runs([submit(RARE_ORG)], timeout_s=1800)
        results = [r for r in results if r is not raw] + tuned
        print_deployed([*results, raw], str(settings.ml_base_path))
        for result in results:
            _report(svc, prediction, result)
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
    """One prediction request to the reference service, described in words."""

    body = json.dumps({"rows": [DEMO_ROW]}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict/{org_id}",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            doc = json.loads(response.read())
    except urllib.error.HTTPError as err:
        return f"the prediction service answers {err.code}: {json.loads(err.read())['error']}"
    return f"a request is answered by {doc['version']} (failure probability {doc['probabilities'][0]:.3f})"


def _prepare_demo_orgs(
    svc: Any, demo_dir: Path, assets: int, days: int, scada_url: str | None
) -> list[str]:
    """Write each demo organization's SCADA data (unless it is there) and register the org."""
    demo_dir.mkdir(parents=True, exist_ok=True)
    if scada_url is not None and ensure_database(scada_url):
        console.print(f"created the database of {mask_url(scada_url)}")
    for seed, (org_id, layout) in enumerate(DEMO_LAYOUTS.items(), start=1):
        rare = org_id == RARE_ORG
        org_assets, org_days = (RARE_ASSETS, RARE_DAYS) if rare else (assets, days)
        shape = f"{org_assets}x{org_days}d{'_rare' if rare else ''}"
        frames = functools.partial(_frames, rare, org_assets, org_days, seed)
        if scada_url is None:
            url = _load_sqlite(demo_dir / f"scada_{org_id}_{shape}.db", frames, layout, org_id)
        else:
            tag = f"{org_id}, {shape} from {DEMO_START:%Y-%m-%d}"
            loaded = load_demo_table(scada_url, frames, layout, tag)
            state = "already held" if loaded.kept else "loaded"
            console.print(
                f"{org_id}: {state} {loaded.rows:,} sensor rows in table {layout.table!r} "
                f"of {mask_url(scada_url)}"
            )
            url = scada_url
        config = scada.demo_org_config(org_id, url, layout, window_days=org_days)
        if rare:
            config["mlModelConfig"].update(scada.RARE_FAILURE_MODEL)
        _register(svc, org_id, config)
    return list(DEMO_LAYOUTS)


def _frames(rare: bool, assets: int, days: int, seed: int) -> Iterator[pd.DataFrame]:
    """One demo organization's sensor history, a week at a time."""
    if rare:
        return scada.iter_rare_failure_frames(
            assets=assets, days=days, interval_min=15, seed=seed, start=DEMO_START
        )
    return scada.iter_sensor_frames(
        assets=assets, days=days, interval_min=10, seed=seed, start=DEMO_START
    )


def _load_sqlite(
    db_path: Path,
    frames: Callable[[], Iterator[pd.DataFrame]],
    layout: scada.ScadaLayout,
    org_id: str,
) -> str:
    """A demo SQLite file (written once, under a temporary name first); its URL."""
    if not db_path.exists():
        partial = db_path.with_name(f".{db_path.name}.partial")
        partial.unlink(missing_ok=True)
        with console.status(f"generating demo SCADA data for {org_id}"):
            rows = scada.write_scada_sqlite(partial, frames(), layout)
        partial.replace(db_path)
        console.print(f"generated {rows:,} sensor rows for {org_id} in {db_path}")
    return f"sqlite:///{db_path}"


def _register(svc: Any, org_id: str, config: dict[str, Any]) -> None:
    """Register the organization, or bring a registered one to the demo's config.

    A schedule set since (`trainctl schedule`) is kept.
    """
    try:
        current = svc.get_organization(org_id)
    except NotFoundError:
        svc.register_organization(org_id, config, actor="demo")
        console.print(f"registered organization {org_id} (queue org.{org_id})")
        return
    if current.get("trainingSchedule"):
        config["trainingSchedule"] = current["trainingSchedule"]
    wanted = parse_org_config(config, org_id).public_dict()
    if any(current.get(key) != value for key, value in wanted.items()):
        svc.update_organization(org_id, config, actor="demo")
        console.print(f"updated organization {org_id} to the demo's config")


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


def _wait_for_worker(proc: subprocess.Popen[bytes], redis_url: str) -> None:

    probe = WorkerProbe(redis_url)
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
