"""Beat tick cost at 100, 1,000 and 10,000 schedules, against a naive full scan in the same run.

Measured on PostgreSQL (a throwaway database per size) and on SQLite (a temp file per size),
with every schedule in the future unless a case makes one due:

- `dispatch`: `Dispatcher.dispatch_due(now)` + `next_due_at()` with nothing due;
- `dispatch_one_due`: the same with exactly one schedule due, which starts one run (the enqueue
  callable returns a task id: this measures the tick in-process, not a broker);
- `beat_tick`: the whole `DatabaseScheduler.tick()`, with the real Redis leader lock and status
  key (in BENCH_REDIS_URL, Redis DB 14 by default; only the beat's two keys are touched).

Baseline in the same run: a tick that loads every schedule row and asks croniter for each one's
next time after its last settled slot (the "re-evaluate every schedule every tick" design).
The sizes are measured in alternating rounds, so that a slow spell of the host lands on all of
them instead of skewing the growth ratios. PostgreSQL is ANALYZEd after loading, as autovacuum
would; SQLite is left without statistics, as deployments leave it. The plans of the tick's
queries are recorded with their buffer counts.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import redis as redis_lib
import sqlalchemy as sa
from croniter import croniter
from sqlalchemy import Engine

from tests.bench.common import host_info, throwaway_database

if TYPE_CHECKING:
    from beat_schedules.dispatch import Dispatcher
    from beat_schedules.scheduler import DatabaseScheduler
    from training_tasks.runtime import Runtime

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# A fixed clock, 30 s past a minute so that no minute-aligned slot sits in a case's window.
NOW = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Sydney")
ORG_ID = "bench-{:05d}"
SCADA_URL = "sqlite:////nonexistent/bench-beat-scada.db"  # never opened: no run executes
ROUNDS = 4
WARMUP_TICKS = 5
NAIVE_TICKS = {100: 48, 1000: 20, 10_000: 8}
CASES = ("dispatch_ms", "dispatch_one_due_ms", "beat_tick_ms", "naive_scan_ms")


@dataclass
class Bed:
    """One size's database and beat, and the tick times measured on it so far."""

    n: int
    engine: Engine
    dispatcher: Dispatcher
    scheduler: DatabaseScheduler
    populate: dict[str, Any]
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    due_ticks: int = 0


def run(quick: bool = False) -> dict[str, Any]:
    """Populate each size on both backends, time the ticks and the naive scan, report ratios."""
    sizes = (100, 1000) if quick else (100, 1000, 10_000)
    ticks = 48 if quick else 200
    result: dict[str, Any] = {"quick": quick, "host": host_info(), "ticks_per_case": ticks}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("postgres", "sqlite"):
            result[backend] = _backend(backend, sizes, ticks, Path(tmp) / backend)
    result["growth"] = {b: _growth(result[b], sizes) for b in ("postgres", "sqlite")}
    result["goal"] = (
        f"tick cost flat in the number of schedules: ours({sizes[-1]})/ours({sizes[0]}) near 1, "
        f"where the naive scan grows about {sizes[-1] // sizes[0]}x"
    )
    _print_summary(result, sizes)
    return result


def _backend(backend: str, sizes: tuple[int, ...], ticks: int, base: Path) -> dict[str, Any]:
    """Every size on its own database, measured in alternating rounds."""
    leader_log = logging.getLogger("beat_schedules.leader")
    level = leader_log.level
    # Each round hands the one lock key to the next size's beat, which the old one reports.
    leader_log.setLevel(logging.ERROR)
    try:
        with ExitStack() as stack:
            stack.enter_context(_beat_keys(REDIS_URL))
            beds = [stack.enter_context(_bed(backend, n, base)) for n in sizes]
            for _ in range(ROUNDS):
                for bed in beds:
                    _round(bed, ticks // ROUNDS)
            return {str(bed.n): _report(bed) for bed in beds}
    finally:
        leader_log.setLevel(level)


@contextmanager
def _bed(backend: str, n: int, base: Path) -> Iterator[Bed]:
    """A migrated database with n schedules, and a dispatcher and a beat scheduler on it."""
    from beat_schedules.dispatch import Dispatcher, Policy
    from training_tasks.config.settings import Settings
    from training_tasks.db.engine import make_engine, migrate
    from training_tasks.protocol.paths import ModelStore
    from training_tasks.runtime import Runtime

    with ExitStack() as stack:
        if backend == "postgres":
            url = stack.enter_context(throwaway_database("bench_beat"))
        else:
            url = f"sqlite:///{base / f'beat_{n}.db'}"
        env = {"REDIS_URL": REDIS_URL, "DATABASE_URL": url, "ML_BASE_PATH": str(base)}
        settings = Settings.from_env(env)
        engine = make_engine(settings.database_url)
        stack.callback(engine.dispose)
        migrate(engine)
        populate = _populate(engine, n, _org_config())
        client = redis_lib.Redis.from_url(REDIS_URL, socket_timeout=10)
        stack.callback(client.close)
        rt = Runtime(settings, engine, client, ModelStore(base), now=lambda: NOW)
        dispatcher = Dispatcher(rt, _enqueue, beat_id=f"bench-{n}", policy=Policy())
        scheduler = _scheduler(rt)
        # Closing the scheduler gives the lock back and closes the runtime's handles.
        stack.callback(scheduler.close)
        if dispatcher.dispatch_due(NOW).submitted or _naive_tick(engine, NOW):
            raise RuntimeError(f"schedules were due at {NOW} after populating {n}; fix _rows")
        yield Bed(n, engine, dispatcher, scheduler, populate)


def _round(bed: Bed, ticks: int) -> None:
    """A batch of every case on one size."""
    dispatcher, times = bed.dispatcher, bed.times
    times["dispatch_ms"] += _timed(lambda: _dispatch(dispatcher), ticks)
    times["beat_tick_ms"] += _beat_ticks(bed.scheduler, dispatcher.rt.redis, ticks)
    naive_ticks = max(1, NAIVE_TICKS.get(bed.n, 8) // ROUNDS)
    times["naive_scan_ms"] += _timed(lambda: _naive_tick(bed.engine, NOW), naive_ticks, warmup=1)
    times["dispatch_one_due_ms"] += _one_due_ticks(bed, ticks)


def _report(bed: Bed) -> dict[str, Any]:
    cases = {case: _percentiles(bed.times[case]) for case in CASES}
    naive = cases["naive_scan_ms"]["p50"]
    return {
        "populate": bed.populate,
        **cases,
        "naive_over_dispatch": round(naive / cases["dispatch_ms"]["p50"], 1),
        "naive_over_beat_tick": round(naive / cases["beat_tick_ms"]["p50"], 1),
        "plans": _plans(bed.engine, bed.dispatcher),
    }


def _beat_ticks(scheduler: DatabaseScheduler, client: Any, ticks: int) -> list[float]:
    """Time `tick()` after handing this beat the lock; its status key shows it dispatched."""
    from beat_schedules.leader import LOCK_KEY
    from training_tasks.protocol.beat_status import STATUS_KEY, read_status

    client.delete(LOCK_KEY, STATUS_KEY)  # as if the last size's beat had died
    times = _timed(scheduler.tick, ticks)
    if read_status(client) is None:
        raise RuntimeError(f"beat did not publish {STATUS_KEY}: it never held the leader lock")
    return times


def _dispatch(dispatcher: Dispatcher) -> None:
    dispatcher.dispatch_due(NOW)
    dispatcher.next_due_at()


def _one_due_ticks(bed: Bed, ticks: int) -> list[float]:
    """Before each tick (untimed) one schedule is made due at its own instant just before NOW.

    Each slot is a distinct instant and the run it starts is marked finished afterwards, so every
    tick takes the same path: plan, settle in one transaction, insert the run, send it.
    """
    from training_tasks.db.tables import training_runs, training_schedules

    gc.collect()
    times: list[float] = []
    for index in range(WARMUP_TICKS + ticks):
        bed.due_ticks += 1
        org_id = ORG_ID.format(bed.due_ticks % bed.n)
        slot = NOW - timedelta(milliseconds=bed.due_ticks)
        _update(bed.engine, training_schedules, org_id, next_run_at=slot)
        started = time.perf_counter()
        report = bed.dispatcher.dispatch_due(NOW)
        bed.dispatcher.next_due_at()
        elapsed_ms = (time.perf_counter() - started) * 1000
        if report.submitted != 1:
            raise RuntimeError(f"one-due tick on {org_id} did not start one run: {report}")
        if index >= WARMUP_TICKS:
            times.append(elapsed_ms)
        _update(bed.engine, training_runs, org_id, status="succeeded")
    return times


def _update(engine: Engine, table: sa.Table, org_id: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.organization_id == org_id).values(**values))


def _naive_tick(engine: Engine, now: datetime) -> list[str]:
    """The full-scan design: every schedule's next time from croniter, compared with now."""
    from training_tasks.db.tables import training_schedules

    c = training_schedules.c
    query = sa.select(c.organization_id, c.pattern, c.timezone, c.settled_until).where(
        c.enabled.is_(True)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    due = []
    for org_id, pattern, zone, last_run in rows:
        start = (last_run or now).astimezone(ZoneInfo(zone))
        if croniter(pattern, start).get_next(datetime) <= now:
            due.append(org_id)
    return due


def _timed(tick: Callable[[], object], count: int, *, warmup: int = WARMUP_TICKS) -> list[float]:
    gc.collect()  # the garbage of populating or of the previous case is not this case's cost
    times = []
    for index in range(warmup + count):
        started = time.perf_counter()
        tick()
        if index >= warmup:
            times.append((time.perf_counter() - started) * 1000)
    return times


def _populate(engine: Engine, n: int, config: dict[str, Any]) -> dict[str, Any]:
    """Insert n organizations and n future schedules in two executemanys."""
    from training_tasks.db.tables import organizations, training_schedules

    started = time.perf_counter()
    org_rows, schedule_rows = _rows(n, config)
    computed = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.insert(organizations), org_rows)
        conn.execute(sa.insert(training_schedules), schedule_rows)
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE organizations, training_schedules"))
    done = time.perf_counter()
    return {
        "schedules": n,
        "next_run_at_s": round(computed - started, 3),
        "insert_s": round(done - computed, 3),
        "total_s": round(done - started, 3),
    }


def _rows(n: int, config: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """n organizations and their schedules, each armed at its first slot after NOW."""
    from beat_schedules.cron import CronSchedule

    rng = random.Random(n)
    org_rows, schedule_rows = [], []
    for index in range(n):
        org_id = ORG_ID.format(index)
        cron = CronSchedule.parse(_pattern(rng), rng.choice(ZONES))
        spec = {"pattern": cron.pattern, "timezone": cron.timezone, "enabled": True}
        doc = {**config, "organizationId": org_id, "trainingSchedule": spec}
        org_rows.append(
            {"id": org_id, "name": org_id, "config": doc, "scada_url": SCADA_URL}
            | {"created_at": NOW, "updated_at": NOW}
        )
        schedule_rows.append(
            {"organization_id": org_id, **spec, "next_run_at": cron.next_after(NOW)}
            | {"revision": 1, "settled_until": NOW, "updated_at": NOW}
        )
    return org_rows, schedule_rows


def _pattern(rng: random.Random) -> str:
    """Weekly, weekday, daily or six-hourly, at a random minute and hour."""
    minute, hour, day = rng.randrange(60), rng.randrange(24), rng.randrange(7)
    kind = rng.random()
    if kind < 0.4:
        return f"{minute} {hour} * * {day}"
    if kind < 0.6:
        return f"{minute} {hour} * * 1-5"
    if kind < 0.9:
        return f"{minute} {hour} * * *"
    return f"{minute} {hour % 6}/6 * * *"


def _org_config() -> dict[str, Any]:
    """The stored config column of a valid organization (SCADA URL kept in its own column)."""
    from training_tasks.config.org import parse_org_config
    from training_tasks.demo.scada import ACME_LAYOUT, demo_org_config

    doc = parse_org_config(demo_org_config("bench", SCADA_URL, ACME_LAYOUT), "bench").public_dict()
    return {**doc, "scadaDbConfig": {}}


def _enqueue(run_id: str, org_id: str, auto_deploy: bool) -> str:
    return f"bench-task-{run_id}"


def _scheduler(rt: Runtime) -> DatabaseScheduler:
    """The project's Celery Beat scheduler on this runtime, on the fixed clock."""
    from beat_schedules.scheduler import DatabaseScheduler
    from training_tasks.messaging.app import app

    scheduler = DatabaseScheduler(app, runtime=rt)
    scheduler.clock = lambda: NOW
    if scheduler.schedule:
        names = ", ".join(scheduler.schedule)
        raise RuntimeError(f"beat has static entries ({names}); the tick would measure them too")
    return scheduler


def _plans(engine: Engine, dispatcher: Dispatcher) -> dict[str, list[str]]:
    """The plan of each query a nothing-due tick sends, captured as the driver received it."""
    seen: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        seen.append((args[2], args[3]))  # (conn, cursor, statement, parameters, ...)

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        _dispatch(dispatcher)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    postgres = engine.dialect.name == "postgresql"
    explain = (
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) " if postgres else "EXPLAIN QUERY PLAN "
    )
    plans = {}
    with engine.connect() as conn:
        for statement, parameters in seen:
            rows = conn.exec_driver_sql(explain + statement, parameters).all()
            name = "due" if "ORDER BY" in statement else "next_due_at"
            plans[name] = [str(row[0] if postgres else row[-1]) for row in rows]
    return plans


def _growth(by_size: dict[str, Any], sizes: tuple[int, ...]) -> dict[str, Any]:
    """p50 at the largest size over p50 at the smallest, per case: near 1 is flat."""
    first, last = by_size[str(sizes[0])], by_size[str(sizes[-1])]
    ratios: dict[str, Any] = {"of": f"{sizes[-1]} over {sizes[0]} schedules"}
    for case in CASES:
        ratios[case.removesuffix("_ms")] = round(last[case]["p50"] / first[case]["p50"], 2)
    return ratios


def _print_summary(result: dict[str, Any], sizes: tuple[int, ...]) -> None:
    print("beat tick, ms p50 / p95; naive scan, ms p50; naive/ours = naive over dispatch p50")
    print("backend        n  populate s        dispatch         one due       beat tick     naive")
    for backend in ("postgres", "sqlite"):
        for n in sizes:
            row = result[backend][str(n)]
            cells = "".join(f"{row[c]['p50']:>8.2f} /{row[c]['p95']:>6.2f}" for c in CASES[:3])
            print(
                f"{backend:<9}{n:>6}{row['populate']['total_s']:>12.2f}{cells}"
                f"{row['naive_scan_ms']['p50']:>10.1f}  ({row['naive_over_dispatch']:.0f}x)"
            )
        growth = " ".join(f"{k} {v}x" for k, v in result["growth"][backend].items() if k != "of")
        print(f"  growth {result['growth'][backend]['of']}: {growth}", flush=True)


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 3), "p95": round(p95, 3), "n": len(ordered)}


@contextmanager
def _beat_keys(url: str) -> Iterator[None]:
    """Refuse a Redis database a beat is using; delete the beat's keys afterwards."""
    from beat_schedules.leader import LOCK_KEY
    from training_tasks.protocol.beat_status import STATUS_KEY

    client = redis_lib.Redis.from_url(url, socket_timeout=10)
    taken = [key for key in (LOCK_KEY, STATUS_KEY) if client.exists(key)]
    if taken:
        client.close()
        raise RuntimeError(
            f"{url} already has {', '.join(taken)}: a beat is using this Redis database; "
            "stop it or point BENCH_REDIS_URL at a free database (redis://127.0.0.1:6379/15)"
        )
    try:
        yield
    finally:
        client.delete(LOCK_KEY, STATUS_KEY)
        client.close()


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
