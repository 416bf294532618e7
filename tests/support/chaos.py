"""The chaos service: a training service on its own PostgreSQL databases, Redis and files, with
its SCADA database behind a proxy that can be slowed or cut, and a webhook that records alerts.

Tests that break things on purpose (test_failures, test_stuck_runs) take the `chaos` fixture,
which tests/integration/conftest.py makes available to every integration test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy.engine import make_url

from tests.support.local_servers import TcpProxy, Webhook
from tests.support.processes import service_env, wait_for
from training_tasks.config.settings import BUNDLED_SCRIPT, Settings
from training_tasks.demo import scada
from training_tasks.registry import runs
from training_tasks.runtime import build_runtime
from training_tasks.service import TrainingService

START = datetime(2026, 1, 1, tzinfo=UTC)
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-02-15T00:00:00Z"}
RUN_TIMEOUT_S = 180.0
# Sleeps for as long as the file `delay_s` next to it says, then trains as the bundled script.
SLOW_SCRIPT = f"""
import pathlib, runpy, sys, time
time.sleep(float((pathlib.Path(__file__).parent / "delay_s").read_text()))
sys.argv[0] = {str(BUNDLED_SCRIPT)!r}
runpy.run_path({str(BUNDLED_SCRIPT)!r}, run_name="__main__")
"""
SEGFAULT_SCRIPT = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"


@dataclass
class Chaos:
    """A service on its own PostgreSQL databases, Redis and files; SCADA behind a proxy."""

    env: dict[str, str]
    base: Path
    tmp: Path
    service: TrainingService
    proxy: TcpProxy
    scada_url: str
    webhook: Webhook

    def register(self, org_id: str, layout: scada.ScadaLayout, **model: Any) -> None:
        doc = scada.demo_org_config(org_id, self.scada_url, layout)
        doc["mlModelConfig"].update(model)
        self.service.register_organization(org_id, doc)

    def use_script(self, org_id: str, layout: scada.ScadaLayout, script: str | None) -> None:
        doc = scada.demo_org_config(org_id, self.scada_url, layout)
        if script:
            doc["mlModelConfig"]["script"] = script
        self.service.update_organization(org_id, doc)

    def delay(self, seconds: float) -> None:
        (self.base / "scripts" / "delay_s").write_text(str(seconds))

    def run(self, run_id: str) -> dict[str, Any]:
        return runs.get_run(self.service.rt.engine, run_id)

    def wait_stage(self, run_id: str, stage: str, timeout_s: float = 60) -> None:
        wait_for(
            lambda: (self.run(run_id)["progress"] or {}).get("stage") == stage,
            timeout_s,
            f"run {run_id} to reach {stage}",
        )

    def versions(self, org_id: str) -> list[str]:
        return [v["version"] for v in self.service.list_versions(org_id)]

    def leftovers(self) -> list[str]:
        """Processes still running a script from this test's folder."""
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(self.base) in cmdline:
                found.append(f"{proc.pid}: {cmdline}")
        return found

    def training_process(
        self, script: str = "slow_train.py", timeout_s: float = 30
    ) -> psutil.Process:
        """The sandboxed process running `script` of this service's ML_BASE_PATH."""

        def find() -> psutil.Process | None:
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = proc.info["cmdline"] or []
                if any(script in part for part in cmdline) and str(self.base) in " ".join(cmdline):
                    return proc
            return None

        return wait_for(find, timeout_s, f"the training process of {script}")


@pytest.fixture
def chaos(tmp_path: Path, redis_url: str, broker: str, postgres_factory: Any) -> Iterator[Chaos]:
    service_db, scada_db = postgres_factory(), postgres_factory()
    for seed, layout in ((7, scada.ACME_LAYOUT), (8, scada.GLOBEX_LAYOUT)):
        frames = scada.iter_sensor_frames(
            assets=6, days=45, interval_min=10, seed=seed, start=START
        )
        scada.write_scada_postgres(scada_db, frames, layout)
    url = make_url(scada_db)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    webhook = Webhook()
    base = tmp_path / "ml"
    (base / "scripts").mkdir(parents=True)
    (base / "scripts" / "slow_train.py").write_text(SLOW_SCRIPT)
    (base / "scripts" / "segfault.py").write_text(SEGFAULT_SCRIPT)
    env = service_env(
        redis_url=redis_url,
        database_url=service_db,
        ml_base_path=base,
        broker_url=broker,  # Redis, unless the test runs on both brokers (on_both_brokers)
        extra={
            "RUN_LEASE_TTL_S": "3",
            "REAPER_INTERVAL_S": "1",
            "RETRY_BACKOFF_S": "0.5",
            "ALERT_WEBHOOK_URL": webhook.url(),
            "ALERT_WEBHOOK_TIMEOUT_S": "2",
        },
    )
    service = TrainingService(build_runtime(Settings.from_env(env)))
    chaos = Chaos(env, base, tmp_path, service, proxy, proxied, webhook)
    chaos.delay(0)
    yield chaos
    service.close()
    proxy.down()
    webhook.server.shutdown()
    webhook.server.server_close()
    wait_for(lambda: not chaos.leftovers(), 10, "no training process left behind")
