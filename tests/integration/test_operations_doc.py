"""The real-services steps of docs/operations.md work when pasted.

Convention of the page: its ```sh and ```bash blocks are commands a reader pastes, in page
order, into one shell started in the repository after `make run`; this test runs exactly those,
in one `bash -e` session with a clean environment. A block with any other info string is not
run: ```text for what needs something the page cannot give (Docker, other hosts, a file of the
reader's own), ```json for data. The one change made to the commands: each variable the page
sets itself (`export NAME=...`) gets this test's value instead (a PostgreSQL database for the
service and one for the SCADA data, a Redis database, a folder under tmp_path), so that the
steps touch nothing shared. A variable the page sets that this test does not know fails the
test: tell it where that variable points here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from training_tasks.cli.demo import DEMO_DAYS
from training_tasks.demo import scada

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "operations.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
EXPORT = re.compile(r"^export ([A-Za-z_][A-Za-z0-9_]*)=.*$", re.MULTILINE)
RUN_INFO = ("sh", "bash")
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
SCRIPT_TIMEOUT_S = 1200
STOP_WAIT_S = 60
# The demo's history ends at 2026-04-30 23:50 UTC; a window ending at the newest row ends here.
NEWEST_ROW_END = "2026-04-30T23:50:01Z"


def blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block, in page order."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


def shell_blocks(text: str) -> list[str]:
    """The blocks a reader runs: ```sh and ```bash."""
    return [body for info, body in blocks(text) if info in RUN_INFO]


def pointed(script: str, values: dict[str, str]) -> str:
    """`script` with each `export NAME=...` of the page set to this test's value of NAME."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            pytest.fail(
                f"docs/operations.md sets {name}, which this test does not point anywhere; add "
                "it to the values of test_the_real_services_steps_run_as_written",
                pytrace=False,
            )
        return f"export {name}={shlex.quote(values[name])}"

    return EXPORT.sub(replace, script)


def test_the_page_runs_some_blocks_and_marks_the_others() -> None:
    found = blocks(PAGE.read_text())
    assert len(shell_blocks(PAGE.read_text())) >= 5
    other = {info for info, _ in found if info not in RUN_INFO}
    assert other <= {"text", "json"}, f"unknown fence info strings: {sorted(other)}"
    not_run = "\n".join(body for info, body in found if info == "text")
    assert "docker" in not_run, "the Docker Compose and other-host steps are marked as not run"


def test_the_org_config_on_the_page_is_the_one_the_demo_registers() -> None:
    text = PAGE.read_text()
    [shown] = [json.loads(body) for info, body in blocks(text) if info == "json"]
    scada_url = re.search(r"^export SCADA_URL=(\S+)$", text, re.MULTILINE)
    assert scada_url is not None, "the page sets SCADA_URL"
    demo = scada.demo_org_config(
        "acme-corp", scada_url.group(1), scada.ACME_LAYOUT, window_days=DEMO_DAYS
    )
    assert shown == demo


def test_the_real_services_steps_run_as_written(
    tmp_path: Path, postgres_factory: Callable[[], str], redis_url: str
) -> None:
    venv = REPO / ".venv" / "bin"
    assert (venv / "activate").is_file(), "the steps start after `make run`, which makes .venv"
    assert shutil.which("trainctl", path=CLEAN_PATH) is None, "only the page may put it on PATH"
    base = tmp_path / "ml"
    service_db = postgres_factory()
    values = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": service_db,
        "SCADA_URL": postgres_factory(),
        "ML_BASE_PATH": str(base),
    }
    script = "\n".join(pointed(body, values) for body in shell_blocks(PAGE.read_text()))
    (tmp_path / "home").mkdir()
    env = {"PATH": CLEAN_PATH, "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8"}
    try:
        done = _run(script, env, tmp_path / "steps.log")
        left = _still_running(base, wait_s=STOP_WAIT_S)
    finally:
        _stop_everything(base)
    output = (tmp_path / "steps.log").read_text()
    assert done == 0, f"the steps failed (exit {done}):\n{output[-6000:]}\n{_logs(base)}"
    assert left == [], f"the page's last step leaves processes running: {left}"
    runs = _runs(service_db)
    assert {(r["trigger"], r["status"]) for r in runs} >= {
        ("cli", "succeeded"),
        ("schedule", "succeeded"),
    }, runs
    assert {r["config"]["dataRange"]["endDate"] for r in runs} == {NEWEST_ROW_END}


def _run(script: str, env: dict[str, str], log_path: Path) -> int:
    """Run the steps in one `bash -e` session from the repository; its exit code."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            ["bash", "-e", "-c", script],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=SCRIPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            pytest.fail(f"the steps did not finish within {SCRIPT_TIMEOUT_S} s", pytrace=False)


def _started_by_steps(base: Path) -> list[psutil.Process]:
    """Processes the steps started: everything running with this test's ML_BASE_PATH."""
    found = []
    for proc in psutil.process_iter(["environ"]):
        try:
            if (proc.info["environ"] or {}).get("ML_BASE_PATH") == str(base):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _still_running(base: Path, *, wait_s: float) -> list[str]:
    """What the steps left running after `wait_s` seconds (a worker finishes its stage first)."""
    deadline = time.monotonic() + wait_s
    while (procs := _started_by_steps(base)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [" ".join(p.cmdline()[:6]) for p in procs if p.is_running()]


def _stop_everything(base: Path) -> None:
    """End what the steps started, by PID: SIGTERM, then SIGKILL after 20 s."""
    procs = _started_by_steps(base)
    for proc in procs:
        proc.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=20)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=10)


def _runs(database_url: str) -> list[dict[str, Any]]:
    from training_tasks.db.engine import make_engine
    from training_tasks.registry import runs

    engine = make_engine(database_url)
    try:
        return [dict(run) for run in runs.list_runs(engine, "acme-corp", 20)]
    finally:
        engine.dispose()


def _logs(base: Path) -> str:
    parts = []
    for name in ("worker.log", "beat.log"):
        path = base / name
        if path.is_file():
            parts.append(f"--- {name} (end)\n{path.read_text()[-3000:]}")
    return "\n".join(parts)
