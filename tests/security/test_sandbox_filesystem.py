"""What a training script may write, attacked with the whole service installed under /tmp.

As in CI (which clones into a temporary folder) and in a fresh clone made with `mktemp -d`, the
checkout, the virtualenv and ML_BASE_PATH all lie under /tmp here. A script gets a private /tmp:
what it leaves there neither the host nor a run beside it ever sees. Other organizations' models,
the service's code and the virtualenv stay out of its reach, while it still writes its outputs,
uses tempfile and reads its data. The last test attacks through a real worker running that code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import needs
from tests.support.processes import celery_worker, service_env
from tests.unit.test_train_script import write_dataset
from tests.unit.test_train_stage import VERSION, training_config
from training_tasks.config.settings import Settings
from training_tasks.demo import scada
from training_tasks.runtime import build_runtime
from training_tasks.sandbox.runner import ResourceLimits, SandboxResult, allowed_env, run_sandboxed
from training_tasks.service import TrainingService
from training_tasks.stages.train import train

REPO = Path(__file__).resolve().parents[2]
CODE = ("training_tasks", "workers", "beat_schedules", "celeryconfig.py", "ml/scripts")
OTHER_ORG = "other-org"
LIMITS = ResourceLimits(memory_mb=1024, file_size_mb=16, processes=64)
REPORT = "filesystem.json"
pytestmark = pytest.mark.usefixtures("private_files")
# Tries each (operation, path) and records the errno name, or "done"; then reports what it saw.
ATTACK = """
import errno, json, os, runpy, sys, tempfile
from pathlib import Path

def attempt(operation, path):
    try:
        if operation == "create":
            Path(path).write_bytes(b"evil")
        elif operation == "modify":
            open(path, "ab").close()
        elif operation == "unlink":
            os.unlink(path)
        else:
            os.mkdir(path)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "done"

attempts = {{label: attempt(*target) for label, target in {targets!r}.items()}}
if len(sys.argv) > 1:  # run by the train stage: the data it must read, and must not change
    config = json.loads(Path(sys.argv[1]).read_text())
    attempts["its own holdout"] = attempt("modify", config["holdoutDataPath"])
    read = [len(Path(config[key]).read_bytes()) for key in ("trainDataPath", "holdoutDataPath")]
fd, temporary = tempfile.mkstemp()
os.write(fd, b"private")
os.close(fd)
Path({marker!r}).write_text("left by a training script")
import training_tasks
Path("{report}").write_text(json.dumps({{
    "attempts": attempts,
    "tempdir": tempfile.gettempdir(),
    "mkstemp": temporary,
    "mkstemp_reads_back": Path(temporary).read_bytes() == b"private",
    "marker_seen_by_itself": Path({marker!r}).is_file(),
    "data_read": read if len(sys.argv) > 1 else [],
    "code": training_tasks.__file__,
    "prefix": sys.prefix,
    "launcher": Path("/proc", str(os.getppid()), "cmdline").read_bytes().decode().split("\\0"),
}}))
if {bundled!r}:
    sys.argv[0] = {bundled!r}
    runpy.run_path({bundled!r}, run_name="__main__")
"""


@dataclass(frozen=True)
class Install:
    """The service installed under /tmp: a checkout, a virtualenv, and ML_BASE_PATH folders."""

    root: Path

    @property
    def checkout(self) -> Path:
        return self.root / "checkout"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return next((self.venv / "lib").glob("python3*/site-packages"))

    @property
    def bundled_script(self) -> Path:
        return self.checkout / "ml" / "scripts" / "train_model.py"

    def ml_base(self) -> Path:
        """A fresh ML_BASE_PATH where another organization already has a deployed model."""
        base = self.root / f"ml-{uuid.uuid4().hex[:8]}"
        deployed = base / "models" / OTHER_ORG / "deployed_v1"
        deployed.mkdir(parents=True)
        (deployed / "model.onnx").write_bytes(b"the other organization's model")
        (base / "scripts").mkdir()
        return base

    def targets(self, base: Path) -> dict[str, tuple[str, str]]:
        """What a hostile script tries to change, by what a person would call it."""
        other = base / "models" / OTHER_ORG
        return {
            "a new model in another org's folder": ("create", f"{other}/model_evil.onnx"),
            "another org's deployed model": ("modify", f"{other}/deployed_v1/model.onnx"),
            "another org's deployed model, removed": ("unlink", f"{other}/deployed_v1/model.onnx"),
            "a folder in another org's models": ("mkdir", f"{other}/deployed_evil"),
            "a script in ML_BASE_PATH": ("create", f"{base}/scripts/train_model.py"),
            "a module in the service's code": ("create", f"{self.checkout}/training_tasks/evil.py"),
            "a .pth file in the virtualenv": ("create", f"{self.site_packages}/evil.pth"),
            "the service's own checkout": ("create", f"{REPO}/training_tasks/evil_{base.name}.py"),
        }


@pytest.fixture(scope="module")
def install() -> Iterator[Install]:
    """The checkout's code and a virtualenv that runs it, copied under /tmp."""
    root = Path(tempfile.mkdtemp(prefix="service-under-tmp-", dir="/tmp"))
    try:
        installed = Install(root)
        for part in CODE:
            source, target = REPO / part, installed.checkout / part
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(installed.venv)],
            check=True,
            timeout=120,
        )
        # The copied code comes first; the packages are this environment's.
        packages = sysconfig.get_paths()["purelib"]
        (installed.site_packages / "service.pth").write_text(
            f"{installed.checkout}\nimport site; site.addsitedir({packages!r})\n"
        )
        yield installed
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_files(isolation: frozenset[str]) -> None:
    needs(isolation, "readonly", "tmp")


@pytest.fixture
def marker() -> Iterator[Path]:
    """A path in the host's /tmp that a script writes to; removed if it ever lands there."""
    path = Path("/tmp", f"left-by-{uuid.uuid4().hex}")
    yield path
    path.unlink(missing_ok=True)


def attack_script(
    folder: Path, targets: dict[str, tuple[str, str]], marker: Path, bundled: Path | None = None
) -> Path:
    script = folder / "attack.py"
    source = ATTACK.format(
        targets=targets, marker=str(marker), report=REPORT, bundled=str(bundled or "")
    )
    script.write_text(source)
    return script


def contents(targets: dict[str, tuple[str, str]]) -> dict[str, bytes | str | None]:
    """What lies at each target path now: its bytes, "a folder", or None."""
    found: dict[str, bytes | str | None] = {}
    for _, path in targets.values():
        target = Path(path)
        found[path] = target.read_bytes() if target.is_file() else None
        if target.is_dir():
            found[path] = "a folder"
    return found


def remove_planted(targets: dict[str, tuple[str, str]]) -> None:
    """Never leave a failed test's files in the checkout or the virtualenv."""
    for operation, path in targets.values():
        if operation == "create":
            Path(path).unlink(missing_ok=True)
        elif operation == "mkdir" and Path(path).is_dir():
            Path(path).rmdir()


def sandboxed(script: str | Path, cwd: Path, **kw: Any) -> SandboxResult:
    program = [str(kw.pop("python", sys.executable))]
    program += ["-c", script] if isinstance(script, str) else [str(script)]
    return run_sandboxed(
        program,
        cwd=cwd,
        env=kw.pop("env", allowed_env()),
        timeout_s=kw.pop("timeout_s", 30.0),
        limits=kw.pop("limits", LIMITS),
        **kw,
    )


def test_a_script_cannot_touch_other_orgs_models_the_code_or_the_venv_all_under_tmp(
    install: Install, marker: Path
) -> None:
    base = install.ml_base()
    workdir = base / "artifacts" / "acme-corp" / VERSION
    workdir.mkdir(parents=True)
    targets = install.targets(base)
    before = contents(targets)
    try:
        script = attack_script(base / "scripts", targets, marker)
        result = sandboxed(script, workdir, python=install.python)
        after = contents(targets)
    finally:
        remove_planted(targets)

    assert result.ok, result.reason()
    report = json.loads((workdir / REPORT).read_text())
    assert report["attempts"] == {label: "EROFS" for label in targets}
    assert after == before  # nothing new, nothing changed, nothing removed
    assert not marker.exists() and report["marker_seen_by_itself"]
    # It ran the virtualenv and imported the code under /tmp: those stay readable.
    assert report["prefix"] == str(install.venv)
    assert report["code"] == str(install.checkout / "training_tasks" / "__init__.py")


def test_what_a_script_leaves_in_tmp_neither_the_host_nor_a_run_beside_it_sees(
    tmp_path: Path,
) -> None:
    name = f"left-by-{uuid.uuid4().hex}"
    paths = [f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}"]
    writer, reader = tmp_path / "writer", tmp_path / "reader"
    writer.mkdir()
    reader.mkdir()
    lines: list[str] = []
    results: list[SandboxResult] = []
    writes = f"""
import json, os, time
from pathlib import Path
for path in {paths!r}:
    Path(path).write_text("mine")
print("written", flush=True)
deadline = time.monotonic() + 20
while not Path("release").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps([Path(path).read_text() for path in {paths!r}]), flush=True)
"""
    thread = threading.Thread(
        target=lambda: results.append(sandboxed(writes, writer, on_line=lines.append))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while "written" not in lines and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        seen_by_host = [Path(path).exists() for path in paths]
        beside: list[str] = []
        reads = f"import json, os; print(json.dumps([os.path.exists(p) for p in {paths!r}]))"
        sandboxed(reads, reader, on_line=beside.append)
    finally:
        (writer / "release").touch()
        thread.join(timeout=30)
        for path in paths:
            Path(path).unlink(missing_ok=True)

    (result,) = results
    assert result.ok, result.reason()
    assert lines[0] == "written"
    assert json.loads(lines[1]) == ["mine", "mine", "mine"]  # it did write, into its own
    assert seen_by_host == [False, False, False]
    assert json.loads(beside[0]) == [False, False, False]


def test_a_script_under_tmp_still_trains_writes_its_outputs_and_uses_tempfile(
    install: Install, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = install.ml_base()
    host_tmpdir = base / "host-tmpdir"
    host_tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(host_tmpdir))  # the worker's own temporary folder
    write_dataset(base / "data", train_rows=2000, holdout_rows=500)
    output = base / "artifacts" / "acme-corp" / VERSION
    script = attack_script(base / "scripts", {}, marker, bundled=install.bundled_script)

    result = train(
        training_config(),
        version=VERSION,
        train_path=base / "data" / "train.parquet",
        holdout_path=base / "data" / "holdout.parquet",
        output_dir=output,
        script=script,
        python=str(install.python),
        timeout_s=60.0,
        limits=LIMITS,
    )

    report = json.loads((output / REPORT).read_text())
    assert result.metrics["auc"] > 0.5 and result.model_path.stat().st_size > 0
    assert report["data_read"] == [
        (base / "data" / name).stat().st_size for name in ("train.parquet", "holdout.parquet")
    ]
    assert report["attempts"] == {"its own holdout": "EROFS"}
    assert report["tempdir"] == "/tmp" and report["mkstemp"].startswith("/tmp/")
    assert report["mkstemp_reads_back"] and not Path(report["mkstemp"]).exists()
    assert list(host_tmpdir.iterdir()) == [] and not marker.exists()


def test_a_fifo_the_host_keeps_in_tmp_is_out_of_a_scripts_reach(tmp_path: Path) -> None:
    fifo = Path("/tmp", f"fifo-{uuid.uuid4().hex}")
    os.mkfifo(fifo)  # a read-only mount would not stop writes into it
    try:
        lines: list[str] = []
        result = sandboxed(
            f"import os; print(os.path.exists({str(fifo)!r}))", tmp_path, on_line=lines.append
        )
    finally:
        fifo.unlink()

    assert result.ok, result.reason()
    assert lines == ["False"]


def test_a_working_folder_in_a_hidden_temporary_folder_stays_writable() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="workdir-", dir="/dev/shm"))
    try:
        result = sandboxed("open('model.onnx', 'w').write('onnx')", workdir)
        written = (workdir / "model.onnx").read_text()
    finally:
        shutil.rmtree(workdir)

    assert result.ok, result.reason()
    assert written == "onnx"


def test_filling_the_private_tmp_fails_naming_its_size(tmp_path: Path) -> None:
    prefix = f"/tmp/fill-{uuid.uuid4().hex}"
    fills = textwrap.dedent(
        f"""
        for n in range(8):
            with open(f"{prefix}-{{n}}", "wb") as out:
                out.write(bytes(4 << 20))
        """
    )
    try:
        limits = ResourceLimits(file_size_mb=16, tmp_size_mb=8)
        result = sandboxed(fills, tmp_path, limits=limits)
        on_host = list(Path("/tmp").glob(f"{Path(prefix).name}-*"))
    finally:
        for path in Path("/tmp").glob(f"{Path(prefix).name}-*"):
            path.unlink()

    assert not result.ok
    assert result.reason().startswith("ran out of space (its private /tmp holds 8 MB")
    assert "No space left on device" in result.reason()
    assert on_host == []


# ----- Through a real worker -----

START = datetime(2026, 1, 1, tzinfo=UTC)
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-01-15T00:00:00Z"}


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_through_a_real_worker_under_tmp_an_org_script_trains_but_touches_nothing_else(
    install: Install,
    marker: Path,
    tmp_path: Path,
    redis_url: str,
    postgres_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service_db, scada_db = postgres_factory(), postgres_factory()
    frames = scada.iter_sensor_frames(assets=3, days=14, interval_min=10, seed=7, start=START)
    scada.write_scada_postgres(scada_db, frames, scada.ACME_LAYOUT)
    base = install.ml_base()
    targets = install.targets(base)
    attack_script(base / "scripts", targets, marker, bundled=install.bundled_script)
    monkeypatch.setenv("HOSTILE_SCADA_URL", scada_db)
    env = service_env(
        redis_url=redis_url,
        database_url=service_db,
        ml_base_path=base,
        # The worker runs the code under /tmp; training scripts run the virtualenv there.
        extra={
            "HOSTILE_SCADA_URL": scada_db,
            "PYTHONPATH": str(install.checkout),
            "PYTHON_ENV": str(install.python),
        },
    )
    service = TrainingService(build_runtime(Settings.from_env(env)))
    doc = scada.demo_org_config("acme-corp", scada_db, scada.ACME_LAYOUT)
    doc["scadaDbConfig"] = {"urlEnv": "HOSTILE_SCADA_URL"}
    doc["mlModelConfig"]["script"] = "attack.py"
    before = contents(targets)
    try:
        service.register_organization("acme-corp", doc)
        monkeypatch.chdir(install.checkout)  # `python -m celery` imports from its folder first
        with celery_worker(env, tmp_path) as worker:
            run = service.train_model("acme-corp", {"dataRange": RANGE}, timeout_s=120)
            log = worker.log_tail(300)
        after = contents(targets)
    finally:
        service.close()
        remove_planted(targets)

    assert run["status"] == "succeeded", run["error"] or log
    report = json.loads((base / "artifacts" / "acme-corp" / run["version"] / REPORT).read_text())
    # The sandbox that ran it was the code under /tmp.
    assert any(str(install.checkout) in arg for arg in report["launcher"]), report["launcher"]
    assert report["attempts"] == {label: "EROFS" for label in [*targets, "its own holdout"]}
    assert after == before
    assert not marker.exists() and report["marker_seen_by_itself"]
    assert report["tempdir"] == "/tmp" and not Path(report["mkstemp"]).exists()
