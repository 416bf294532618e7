"""Fixed cost of a small training run through a real worker, without and with the fork server.

200 runs per mode of 10,000 demo SCADA rows each, across 50 organizations in turn, each mode on
its own `celery worker -c 2` (own embedded Redis, own database): TRAINING_FORK_SERVER=0 and =1.
The two modes take turns, run by run and then block by block, so machine noise hits both alike;
a few runs first warm each worker process up (not counted). The first half runs one at a time:
the fixed cost of a run is their median end-to-end wall time (queued to finished, from the run
records) minus the bare LightGBM fit of the same rows with the same hyperparameters, timed in
this process (warm) between the runs. The second half keeps two runs in flight, as many as a
worker runs at once: runs per minute. `python -m tests.bench bench_run_overhead --quick` (or
BENCH_OVERHEAD_RUNS / BENCH_OVERHEAD_ORGS) runs fewer.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-01-22T00:00:00Z"}
ASSETS, DAYS, INTERVAL_MIN = 10, 21, 30  # about 10,000 readings in RANGE
ITERATIONS = 50
CONCURRENCY = 2  # of each worker, and runs in flight for the throughput half
BLOCK_RUNS = 10  # runs of one mode before the other's turn, in the throughput half
MODES = {"fork_server_off": "0", "fork_server_on": "1"}
FINISHED = ("succeeded", "failed", "rejected", "cancelled", "validated")
GOAL_FIXED_COST_S = 0.5


@dataclass
class _Mode:
    """One worker setting: its service handle, its worker and what its runs gave."""

    svc: Any
    worker_pid: int
    alone: list[dict[str, Any]] = field(default_factory=list)
    together: list[dict[str, Any]] = field(default_factory=list)
    together_s: float = 0.0
    warm_up: list[dict[str, Any]] = field(default_factory=list)


def run(quick: bool = False) -> dict[str, Any]:
    """Both modes on the same data; returns runs per minute and fixed cost per run of each."""
    from tests.bench.common import host_info

    runs_n = int(os.environ.get("BENCH_OVERHEAD_RUNS") or (20 if quick else 200))
    orgs_n = int(os.environ.get("BENCH_OVERHEAD_ORGS") or (10 if quick else 50))
    orgs = [f"bench-{i:02d}" for i in range(orgs_n)]
    host = host_info()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        base = Path(tmp)
        scada_url, rows = _scada(base)
        with contextlib.ExitStack() as stack:
            modes = {
                name: stack.enter_context(_worker(base / name, scada_url, flag, orgs))
                for name, flag in MODES.items()
            }
            for mode in modes.values():  # each worker process starts its fork server
                mode.warm_up, _ = _runs(mode.svc, orgs, list(range(2 * CONCURRENCY)), CONCURRENCY)
            bare_fit_s = _alone(modes, orgs, runs_n // 2)
            _together(modes, orgs, runs_n - runs_n // 2)
            results = {name: _report(mode, bare_fit_s) for name, mode in modes.items()}
    off, on = results["fork_server_off"], results["fork_server_on"]
    return {
        "runs_per_mode": runs_n,
        "organizations": orgs_n,
        "scada_rows": rows,
        "iterations": ITERATIONS,
        "worker_concurrency": CONCURRENCY,
        "host": host,
        "bare_fit_s": round(bare_fit_s, 4),
        **results,
        "fixed_cost_ratio_on_to_off": round(on["fixed_cost_s"] / off["fixed_cost_s"], 3),
        "runs_per_minute_ratio_on_to_off": round(on["runs_per_minute"] / off["runs_per_minute"], 2),
        "goal": f"fixed cost per run at most {GOAL_FIXED_COST_S} s with the fork server",
        "meets_goal": on["fixed_cost_s"] <= GOAL_FIXED_COST_S,
    }


def _scada(base: Path) -> tuple[str, int]:
    """One demo SCADA database that every organization reads."""
    from training_tasks.demo import scada

    frame = scada.generate_sensor_frame(
        assets=ASSETS,
        days=DAYS,
        interval_min=INTERVAL_MIN,
        seed=3,
        start=datetime(2026, 1, 1, tzinfo=UTC),
    )
    path = base / "scada.db"
    scada.write_scada_sqlite(path, frame, scada.ACME_LAYOUT)
    return f"sqlite:///{path}", len(frame)


@contextlib.contextmanager
def _worker(base: Path, scada_url: str, flag: str, orgs: list[str]) -> Iterator[_Mode]:
    """The organizations registered and a worker running with TRAINING_FORK_SERVER=`flag`."""
    from tests.support.processes import celery_worker, service_env
    from training_tasks.config.settings import Settings
    from training_tasks.demo.embedded_redis import EmbeddedRedis
    from training_tasks.runtime import build_runtime
    from training_tasks.service import TrainingService

    base.mkdir()
    with EmbeddedRedis() as redis_server:
        env = service_env(
            redis_url=redis_server.url,
            database_url=f"sqlite:///{base / 'svc.db'}",
            ml_base_path=base / "ml",
            extra={"TRAINING_FORK_SERVER": flag},
        )
        svc = TrainingService(build_runtime(Settings.from_env(env)))
        try:
            for org_id in orgs:
                svc.register_organization(org_id, _org_config(org_id, scada_url))
            with celery_worker(env, base, concurrency=CONCURRENCY) as worker:
                yield _Mode(svc, worker.proc.pid)
        finally:
            svc.close()


def _org_config(org_id: str, scada_url: str) -> dict[str, Any]:
    from training_tasks.demo import scada

    doc = scada.demo_org_config(org_id, scada_url, scada.ACME_LAYOUT)
    doc["mlModelConfig"]["hyperparameters"]["numIterations"] = ITERATIONS
    # Every run deploys; every check still runs (the deployed model is compared too).
    doc["mlModelConfig"]["thresholds"] = {"accuracy": 0, "precision": 0, "recall": 0}
    return doc


def _alone(modes: dict[str, _Mode], orgs: list[str], runs_n: int) -> float:
    """One run at a time, the modes in turn, a bare fit after each pair; its median."""
    fit: Callable[[], float] | None = None
    fits = []
    for number in range(runs_n):
        for mode in modes.values():
            summaries, _ = _runs(mode.svc, orgs, [number], 1)
            mode.alone += summaries
        if fit is None:
            fit = _bare_fit(mode.svc, mode.alone[0]["runId"])
        fits.append(fit())
    return statistics.median(fits)


def _together(modes: dict[str, _Mode], orgs: list[str], runs_n: int) -> None:
    """CONCURRENCY runs in flight, BLOCK_RUNS of one mode and then of the other."""
    for first in range(0, runs_n, BLOCK_RUNS):
        numbers = list(range(first, min(first + BLOCK_RUNS, runs_n)))
        for mode in modes.values():
            summaries, seconds = _runs(mode.svc, orgs, numbers, CONCURRENCY)
            mode.together += summaries
            mode.together_s += seconds


def _runs(
    svc: Any, orgs: list[str], numbers: list[int], in_flight: int
) -> tuple[list[dict[str, Any]], float]:
    """Runs `numbers` (organization `number % len(orgs)`), `in_flight` at a time: their final
    summaries, and the seconds from the first submit to the last finish."""
    pending, flying, done = list(numbers), list[Any](), list[dict[str, Any]]()
    started = time.perf_counter()
    deadline = time.monotonic() + 60 + len(numbers) * 10
    while pending or flying:
        while pending and len(flying) < in_flight:
            org_id = orgs[pending.pop(0) % len(orgs)]
            flying.append(svc.train_model(org_id, {"dataRange": RANGE}, wait=False))
        time.sleep(0.005)
        for handle in list(flying):
            summary = handle.status()
            if summary["status"] in FINISHED:
                if summary["status"] != "succeeded":
                    raise RuntimeError(f"run {handle.run_id} ended {summary['status']}: {summary}")
                flying.remove(handle)
                done.append(summary)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(done)} of {len(numbers)} runs finished in time")
    return done, time.perf_counter() - started


def _report(mode: _Mode, bare_fit_s: float) -> dict[str, Any]:
    alone_p50 = statistics.median(map(_wall_s, mode.alone))
    return {
        "runs_per_minute": round(len(mode.together) / mode.together_s * 60, 1),
        "fixed_cost_s": round(alone_p50 - bare_fit_s, 3),
        # Not counted above: the first runs of each worker process (a fork server starting).
        "warm_up_run_wall_s": [round(_wall_s(result), 3) for result in mode.warm_up],
        "one_at_a_time": _summary(mode.alone),
        f"{CONCURRENCY}_in_flight": _summary(mode.together),
        "fork_servers": _fork_servers(mode.worker_pid),
    }


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall time of the runs and where it went (medians)."""
    walls = [_wall_s(result) for result in results]
    stages = {
        stage: round(statistics.median(r["stageTimings"][stage]["seconds"] for r in results), 3)
        for stage in ("extract", "train", "validate", "deploy")
    }
    sandbox_s = statistics.median(r["metrics"]["training"]["elapsedS"] for r in results)
    wall_p50 = statistics.median(walls)
    return {
        "run_wall_s": {
            "p50": round(wall_p50, 3),
            "p90": round(statistics.quantiles(walls, n=10)[-1], 3) if len(walls) > 1 else None,
            "max": round(max(walls), 3),
        },
        "stage_s_p50": stages,
        "sandboxed_script_s_p50": round(sandbox_s, 3),
        "between_stages_s_p50": round(wall_p50 - sum(stages.values()), 3),
    }


def _wall_s(result: dict[str, Any]) -> float:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    return (at(result["finishedAt"]) - at(result["queuedAt"])).total_seconds()


def _fork_servers(worker_pid: int) -> list[dict[str, Any]]:
    """Memory of each fork server under a worker: resident, and proportional (shared pages split
    between the processes that map them)."""
    import psutil

    found = []
    for proc in psutil.Process(worker_pid).children(recursive=True):
        try:
            if "training_tasks.sandbox.zygote" not in " ".join(proc.cmdline()):
                continue
            memory = proc.memory_full_info()
        except psutil.Error:
            continue
        found.append(
            {"rss_mb": round(memory.rss / 2**20, 1), "pss_mb": round(memory.pss / 2**20, 1)}
        )
    return found


def _bare_fit(svc: Any, run_id: str) -> Callable[[], float]:
    """A timer of lightgbm.train on the rows the run fit on, with the run's parameters."""
    import lightgbm as lgb
    import numpy as np
    import pyarrow.parquet as pq

    from training_tasks.config.training import from_wire
    from training_tasks.registry import orgs as org_rows
    from training_tasks.registry import runs
    from training_tasks.stages.extract.stage import extract

    run_row = runs.get_run(svc.rt.engine, run_id)
    config = from_wire(run_row["config"])
    org = org_rows.get_org(svc.rt.engine, run_row["organization_id"])
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as tmp:
        data = extract(org.resolve_scada_url(), org.schema_config, config, Path(tmp))
        table = pq.read_table(data.train_path)
    metrics = run_row["metrics"]
    assert metrics is not None, f"run {run_id} finished without metrics"
    fit_rows = int(metrics["script"]["fit_rows"])
    columns = [table.column(c).to_numpy(zero_copy_only=False) for c in config.feature_columns]
    x = np.column_stack(columns).astype(np.float32)[:fit_rows]
    y = table.column(config.target_column).to_numpy(zero_copy_only=False)[:fit_rows]
    params = {**config.lightgbm_params(), "verbosity": -1}
    rounds = params.pop("num_iterations")

    def fit() -> float:
        started = time.perf_counter()
        lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=rounds)
        return time.perf_counter() - started

    fit()  # warms LightGBM and OpenMP up
    return fit


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv[1:]), indent=2))
