"""Celery overhead of the whole chain: wall time of a run minus the work inside its stages.

Baseline measured in the same run: the round trip of a trivial task (`celery.accumulate`)
through the same Redis and worker.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-01-29T00:00:00Z"}


def run(quick: bool = False) -> dict[str, Any]:
    """Run small trainings end to end through a real worker; report overhead per run."""
    from celery import Celery

    from tests.support.processes import celery_worker, service_env
    from training_tasks.config.settings import Settings
    from training_tasks.demo import scada
    from training_tasks.demo.embedded_redis import EmbeddedRedis
    from training_tasks.runtime import build_runtime
    from training_tasks.service import TrainingService

    runs_n = 5 if quick else 15
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis() as redis_server:
        base = Path(tmp)
        scada_path = base / "scada.db"
        frame = scada.generate_sensor_frame(
            assets=12, days=28, interval_min=30, seed=3, start=datetime(2026, 1, 1, tzinfo=UTC)
        )
        scada.write_scada_sqlite(scada_path, frame, scada.ACME_LAYOUT)
        env = service_env(
            redis_url=redis_server.url,
            database_url=f"sqlite:///{base / 'svc.db'}",
            ml_base_path=base / "ml",
        )
        svc = TrainingService(build_runtime(Settings.from_env(env)))
        doc = scada.demo_org_config("bench", f"sqlite:///{scada_path}", scada.ACME_LAYOUT)
        doc["mlModelConfig"]["hyperparameters"]["numIterations"] = 5
        doc["mlModelConfig"]["thresholds"] = {
            "accuracy": 0,
            "precision": 0,
            "recall": 0,
            "notWorseThanDeployed": False,
        }
        svc.register_organization("bench", doc)
        with celery_worker(env, base, concurrency=2):
            app = Celery(broker=redis_server.url, backend=redis_server.url)
            trivial_ms = _round_trips(app, 50 if quick else 200)
            overheads, walls, parts = [], [], []
            for _ in range(runs_n):
                result = svc.train_model(
                    "bench", {"dataRange": RANGE}, timeout_s=120, poll_interval_s=0.02
                )
                assert isinstance(result, dict) and result["success"], result
                wall, work = _wall_and_work(result)
                walls.append(wall)
                overheads.append((wall - work) * 1000)
                parts.append(_breakdown_ms(result))
            app.close()
        svc.close()
    p50 = statistics.median(overheads)
    return {
        "runs": runs_n,
        "trivial_task_round_trip_ms": {
            "p50": statistics.median(trivial_ms),
            "max": max(trivial_ms),
        },
        "chain_overhead_ms": {"p50": p50, "max": max(overheads), "min": min(overheads)},
        "overhead_breakdown_ms_p50": {
            key: statistics.median(p[key] for p in parts) for key in parts[0]
        },
        "run_wall_s_p50": statistics.median(walls),
        "overhead_vs_trivial_round_trip": p50 / statistics.median(trivial_ms),
        "goal": "chain overhead at most about 20 ms per run",
    }


def _round_trips(app: Any, n: int) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        app.send_task("celery.accumulate", args=[i], queue="training.requests").get(timeout=10)
        times.append((time.perf_counter() - started) * 1000)
    return times[5:]


def _breakdown_ms(result: dict[str, Any]) -> dict[str, float]:
    """Where the overhead goes: before the first stage, between stages, inside stages."""

    def at(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    timings = sorted(result["stageTimings"].values(), key=lambda t: t["startedAt"])
    queued, finished = at(result["queuedAt"]), at(result["finishedAt"])
    starts = [at(t["startedAt"]) for t in timings]
    ends = [s + timedelta(seconds=t["seconds"]) for s, t in zip(starts, timings, strict=True)]
    between = sum((b - a).total_seconds() for a, b in zip(ends, starts[1:], strict=False))
    inside = sum(t["seconds"] - (t["workSeconds"] or 0.0) for t in timings)
    return {
        "queued_to_first_stage": (starts[0] - queued).total_seconds() * 1000,
        "between_stages": between * 1000,
        "inside_stages_not_work": inside * 1000,
        "last_stage_to_finished": (finished - ends[-1]).total_seconds() * 1000,
    }


def _wall_and_work(result: dict[str, Any]) -> tuple[float, float]:
    queued = datetime.fromisoformat(result["queuedAt"].replace("Z", "+00:00"))
    finished = datetime.fromisoformat(result["finishedAt"].replace("Z", "+00:00"))
    work = sum(t.get("workSeconds") or 0.0 for t in result["stageTimings"].values())
    return (finished - queued).total_seconds(), work


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
