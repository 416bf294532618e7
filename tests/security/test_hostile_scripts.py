"""Hostile training scripts, one attack per test, each with the outcome a person would read.

Every attack runs through the train stage as an organization's own script would, fails the run
with a reason that names the limit it hit, leaves no process behind, and the next, normal
training succeeds. Attacks that need the kernel's namespaces skip, saying so, on a host that
does not allow them (the sandbox then logs a warning; see docs/security.md).
The last test sends three attacks through a real worker.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy.engine import make_url

from tests.security.conftest import needs
from tests.support.processes import celery_worker, service_env
from tests.unit.test_train_stage import VERSION, training_config
from training_tasks.config.settings import BUNDLED_SCRIPT, Settings
from training_tasks.demo import scada
from training_tasks.errors import TrainingError, TrainingKilled
from training_tasks.runtime import build_runtime
from training_tasks.sandbox.runner import KILL_GRACE_S, ResourceLimits
from training_tasks.service import TrainingService
from training_tasks.stages.train import TrainResult, train

LIMITS = ResourceLimits(memory_mb=1024, file_size_mb=16, processes=64)
TAG = "HOSTILE_RUN"
SECRETS = {
    "DATABASE_URL": "postgresql://svc:db-password-1@db/training",
    "REDIS_URL": "redis://:redis-password-2@queue:6379/0",
    "ML_MASTER_KEYS": "k1:bWFzdGVyLWtleS0z",
    "ACME_SCADA_URL": "postgresql://scada:scada-password-4@plant/sensors",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-5",
    "PGPASSWORD": "pg-password-6",
}
GOOD_SCRIPT = """
out = Path(config["outputPath"])
(out / "model.onnx").write_bytes(b"onnx")
(out / "metrics.json").write_text(
    '{"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75, "auc": 0.93}'
)
"""


class Attack:
    """Runs hostile scripts through the train stage in one test's folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.tag = str(folder)  # in every attack process's command line or environment

    def script(self, body: str, name: str = "attack.py") -> Path:
        path = self.folder / name
        header = (
            "import json, os, signal, socket, subprocess, sys, time\nfrom pathlib import Path\n"
            f"os.environ[{TAG!r}] = {self.tag!r}\n"
            "config = json.loads(Path(sys.argv[1]).read_text())\n"
        )
        path.write_text(header + textwrap.dedent(body))
        return path

    def train(self, body: str, **kw: Any) -> TrainResult:
        return train(
            training_config(),
            version=VERSION,
            train_path=self.folder / "data" / "train.parquet",
            holdout_path=self.folder / "data" / "holdout.parquet",
            output_dir=self.folder / "artifacts",
            script=self.script(body, kw.pop("name", "attack.py")),
            python=sys.executable,
            timeout_s=kw.pop("timeout_s", 20.0),
            limits=kw.pop("limits", LIMITS),
            **kw,
        )

    def fails(self, body: str, **kw: Any) -> tuple[str, float]:
        """The error a person reads when `body` runs, and how long the run took."""
        started = time.monotonic()
        with pytest.raises(TrainingError) as failure:
            self.train(body, **kw)
        return str(failure.value), time.monotonic() - started

    def leftovers(self) -> list[str]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                mine = self.tag in " ".join(proc.info["cmdline"] or [])
                if mine or proc.environ().get(TAG) == self.tag:
                    found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
            except psutil.Error:
                continue  # gone, or not ours to read
        return found

    def assert_nothing_left_and_training_still_works(self) -> None:
        deadline = time.monotonic() + 5.0
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == []
        result = self.train(GOOD_SCRIPT, name="good.py")
        assert result.model_path.read_bytes() == b"onnx"


@pytest.fixture
def attack(tmp_path: Path) -> Iterator[Attack]:
    attacker = Attack(tmp_path)
    yield attacker
    for line in attacker.leftovers():  # never leave a failed test's processes running
        psutil.Process(int(line.split(":")[0])).kill()


def test_a_memory_bomb_fails_naming_the_memory_limit(attack: Attack) -> None:
    error, _ = attack.fails(
        "blocks = []\nwhile True:\n    blocks.append(bytearray(32 << 20))\n",
        limits=ResourceLimits(memory_mb=256),
    )

    assert "hit the memory limit of 256 MB" in error and "MemoryError" in error
    assert "raise the memory limit or shorten dataRange" in error
    attack.assert_nothing_left_and_training_still_works()


@pytest.mark.parametrize(
    "bomb",
    [
        "while True:\n    os.fork()\n",
        "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    ],
    ids=["plain", "ignoring-failed-forks"],
)
def test_a_fork_bomb_is_killed_with_all_its_processes_naming_the_process_limit(
    attack: Attack, bomb: str
) -> None:
    started = time.monotonic()
    with pytest.raises(TrainingError) as failure:  # a permanent failure: not retried
        attack.train(bomb)

    assert not isinstance(failure.value, TrainingKilled)
    assert "process limit" in str(failure.value) and "64" in str(failure.value)
    assert time.monotonic() - started < 10.0
    attack.assert_nothing_left_and_training_still_works()


def test_a_huge_file_fails_naming_the_file_size_limit(attack: Attack) -> None:
    error, _ = attack.fails(
        "with open('big.bin', 'wb') as out:\n    while True:\n        out.write(bytes(1 << 20))\n"
    )

    assert "wrote a file past the file size limit of 16 MB" in error
    assert "File too large" in error
    assert (attack.folder / "artifacts" / "big.bin").stat().st_size <= 16 << 20
    attack.assert_nothing_left_and_training_still_works()


def test_a_huge_file_from_a_program_that_does_not_catch_sigxfsz_names_the_limit(
    attack: Attack,
) -> None:
    error, _ = attack.fails(
        "signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # as a C program would have it\n"
        "with open('big.bin', 'wb') as out:\n    while True:\n        out.write(bytes(1 << 20))\n"
    )

    assert "stopped by SIGXFSZ: a file outgrew the limit of 16 MB" in error
    attack.assert_nothing_left_and_training_still_works()


def test_spinning_the_cpu_past_the_time_limit_fails_naming_the_timeout(attack: Attack) -> None:
    error, took_s = attack.fails("while True:\n    pass\n", timeout_s=1.0)

    assert "killed after 1 s timeout" in error and "raise TRAINING_TIMEOUT_S" in error
    assert took_s < 1.0 + KILL_GRACE_S + 2.0
    attack.assert_nothing_left_and_training_still_works()


def test_a_script_that_ignores_sigterm_is_killed_after_the_grace_period(attack: Attack) -> None:
    error, took_s = attack.fails(
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n", timeout_s=1.0
    )

    assert "killed after 1 s timeout" in error
    assert took_s < 1.0 + 2 * KILL_GRACE_S + 2.0
    attack.assert_nothing_left_and_training_still_works()


def test_a_setsid_grandchild_holding_stdout_open_neither_hangs_the_run_nor_survives_it(
    attack: Attack,
) -> None:
    error, took_s = attack.fails(
        """
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)  # keeps stdout and stderr open
            os._exit(0)
        print("left a daemon behind", flush=True)
        """
    )

    assert "exited 0 but it wrote no model.onnx" in error
    assert took_s < 3.0
    attack.assert_nothing_left_and_training_still_works()


def test_killing_its_own_parent_does_not_free_the_script(attack: Attack) -> None:
    error, _ = attack.fails(
        """
        for pid in (os.getppid(), 1):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(60)
        """,
        timeout_s=2.0,
    )

    # With a PID namespace its parent is the sandbox's init, which ignores the signal; without
    # one the launcher dies and the worker kills the process group.
    assert "killed after 2 s timeout" in error or "killed by SIGKILL" in error
    attack.assert_nothing_left_and_training_still_works()


def test_the_environment_holds_no_database_url_master_key_scada_url_or_secret(
    attack: Attack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)

    attack.fails("Path('env.json').write_text(json.dumps(dict(os.environ)))\nsys.exit(1)\n")

    seen = json.loads((attack.folder / "artifacts" / "env.json").read_text())
    assert not set(SECRETS) & set(seen)
    assert not [value for value in SECRETS.values() if value in json.dumps(seen)]
    for path in (attack.folder / "artifacts").iterdir():  # training_config.json, train.log, ...
        text = path.read_text(errors="replace")
        assert not [value for value in SECRETS.values() if value in text], path
    attack.assert_nothing_left_and_training_still_works()


def test_other_processes_environments_are_out_of_reach_through_proc(
    attack: Attack, isolation: frozenset[str]
) -> None:
    needs(isolation, "proc")
    secret = SECRETS["ACME_SCADA_URL"]
    decoy = psutil.Popen(  # stands in for the worker, whose environment holds the SCADA URL
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "X": secret}
    )
    try:
        attack.fails(
            """
            found = []
            for entry in Path("/proc").iterdir():
                try:
                    found.append((entry / "environ").read_bytes().decode(errors="replace"))
                except OSError:
                    pass
            Path("proc.json").write_text(json.dumps(found))
            sys.exit(1)
            """
        )
    finally:
        decoy.kill()
        decoy.wait()

    dump = (attack.folder / "artifacts" / "proc.json").read_text()
    assert json.loads(dump) and secret not in dump
    attack.assert_nothing_left_and_training_still_works()


def test_connecting_to_the_database_over_tcp_fails_naming_the_network(attack: Attack) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a database that trusts everyone
        port = listener.getsockname()[1]
        error, _ = attack.fails(f"socket.create_connection(('127.0.0.1', {port}), timeout=5)\n")
        listener.settimeout(0.1)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody ever knocked

    assert "tried to use the network, which training scripts may not" in error
    attack.assert_nothing_left_and_training_still_works()


def test_connecting_to_the_databases_unix_socket_fails_naming_the_network(
    attack: Attack,
) -> None:
    path = attack.folder / ".s.PGSQL.5432"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        error, _ = attack.fails(f"socket.socket(socket.AF_UNIX).connect({str(path)!r})\n")
        listener.settimeout(0.1)
        with pytest.raises(TimeoutError):
            listener.accept()

    assert "tried to use the network, which training scripts may not" in error
    attack.assert_nothing_left_and_training_still_works()


def test_a_script_that_swallows_the_network_error_trains_but_never_reaches_the_database(
    attack: Attack, tmp_path: Path
) -> None:
    from tests.unit.test_train_script import write_dataset

    write_dataset(tmp_path / "data", train_rows=2000, holdout_rows=500)
    result = attack.train(
        f"""
        import runpy
        reached = []
        for address in [("127.0.0.1", 5432), ("127.0.0.1", 6379), "/run/postgresql/.s.PGSQL.5432"]:
            try:
                family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
                with socket.socket(family) as sock:
                    sock.settimeout(2)
                    sock.connect(address)
                reached.append(str(address))
            except OSError:
                pass
        Path(config["outputPath"], "reached.json").write_text(json.dumps(reached))
        sys.argv[0] = {str(BUNDLED_SCRIPT)!r}
        runpy.run_path({str(BUNDLED_SCRIPT)!r}, run_name="__main__")
        """
    )

    assert json.loads((tmp_path / "artifacts" / "reached.json").read_text()) == []
    assert result.metrics["auc"] > 0.5  # the bundled script needs no network
    attack.assert_nothing_left_and_training_still_works()


def test_raising_its_own_limits_is_refused_even_as_root(attack: Attack) -> None:
    error, _ = attack.fails(
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)\n"
    )

    assert "not allowed to raise maximum limit" in error
    attack.assert_nothing_left_and_training_still_works()


def test_writing_outside_its_working_folder_is_refused(
    attack: Attack, isolation: frozenset[str]
) -> None:
    needs(isolation, "readonly")
    outside = Path(tempfile.mkdtemp(dir=Path.home(), prefix="other-tenant-"))
    try:
        (outside / "model.onnx").write_bytes(b"the real model")
        error, _ = attack.fails(f"Path({str(outside)!r}, 'model.onnx').write_bytes(b'evil')\n")
        assert (outside / "model.onnx").read_bytes() == b"the real model"
    finally:
        shutil.rmtree(outside)

    assert "wrote outside its working folder, which training scripts may not" in error
    attack.assert_nothing_left_and_training_still_works()


# ----- Through a real worker -----

START = datetime(2026, 1, 1, tzinfo=UTC)
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-01-15T00:00:00Z"}
ATTACKS = {
    "fork_bomb.py": ("import os\nwhile True:\n    os.fork()\n", "process limit"),
    "network.py": (
        "import socket\nsocket.create_connection(('127.0.0.1', 5432), timeout=5)\n",
        "tried to use the network",
    ),
    "daemon.py": (
        textwrap.dedent(
            """
            import json, os, pathlib, sys, time
            config = json.loads(pathlib.Path(sys.argv[1]).read_text())
            seen = [dict(os.environ)]
            for entry in pathlib.Path("/proc").iterdir():
                try:
                    seen.append((entry / "environ").read_bytes().decode(errors="replace"))
                except OSError:
                    pass
            pathlib.Path(config["outputPath"], "seen.json").write_text(json.dumps(seen))
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(120)
                os._exit(0)
            sys.exit("left a daemon behind")
            """
        ),
        "left a daemon behind",
    ),
}


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_hostile_scripts_fail_on_a_real_worker_which_then_trains_normally(
    tmp_path: Path, redis_url: str, postgres_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    service_db, scada_db = postgres_factory(), postgres_factory()
    frames = scada.iter_sensor_frames(assets=3, days=14, interval_min=10, seed=7, start=START)
    scada.write_scada_postgres(scada_db, frames, scada.ACME_LAYOUT)
    base = tmp_path / "ml"
    (base / "scripts").mkdir(parents=True)
    for name, (source, _) in ATTACKS.items():
        (base / "scripts" / name).write_text(source)
    monkeypatch.setenv("HOSTILE_SCADA_URL", scada_db)
    env = service_env(
        redis_url=redis_url,
        database_url=service_db,
        ml_base_path=base,
        extra={"HOSTILE_SCADA_URL": scada_db},
    )
    service = TrainingService(build_runtime(Settings.from_env(env)))
    doc = scada.demo_org_config("acme-corp", scada_db, scada.ACME_LAYOUT)
    doc["scadaDbConfig"] = {"urlEnv": "HOSTILE_SCADA_URL"}
    service.register_organization("acme-corp", doc)
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        with celery_worker(env, tmp_path) as worker:
            for name in [*ATTACKS, None]:
                doc["mlModelConfig"]["script"] = name
                if name is None:
                    del doc["mlModelConfig"]["script"]
                service.update_organization("acme-corp", doc)
                outcomes[name or "bundled"] = service.train_model(
                    "acme-corp", {"dataRange": RANGE}, timeout_s=120
                )
            log = worker.log_tail(300)
    finally:
        service.close()

    for name, (_, reason) in ATTACKS.items():
        run = outcomes[name]
        assert run["status"] == "failed" and reason in run["error"], (name, run["error"], log)
    assert outcomes["bundled"]["status"] == "succeeded", outcomes["bundled"]["error"] or log
    seen = (base / "artifacts" / "acme-corp" / outcomes["daemon.py"]["version"]).rglob("*")
    database = make_url(scada_db).database or ""
    for path in [p for p in seen if p.is_file() and p.suffix != ".parquet"]:
        assert database not in path.read_text(errors="replace"), path  # no SCADA URL in files
    assert Attack(base).leftovers() == []
