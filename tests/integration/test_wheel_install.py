"""The wheels work where they are installed, far from the source tree.

The service's wheel, installed into a fresh virtualenv, trains and deploys the demo organizations
with its own `trainctl` from a folder outside the source tree, running the training script it
carries. The client's wheel, installed into a virtualenv that holds nothing but Celery and what
Celery needs, imports without SQLAlchemy, LightGBM, pandas or ONNX.

Everything runs offline: wheels are built with this virtualenv's setuptools, installed with
`--no-deps --no-index`, and a fresh virtualenv gets its dependencies from this one's
site-packages (all of them through a .pth line for the service; only Celery's own for the client).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.processes import spawn_logged, stop_group

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROJECT_SITE = Path(sysconfig.get_paths()["purelib"])
# What the service's wheel is built from (the Dockerfile copies the same).
SERVICE_SOURCES = (
    "pyproject.toml",
    "README.md",
    "celeryconfig.py",
    "training_tasks",
    "workers",
    "beat_schedules",
    "ml/scripts/train_model.py",
    "clients/python",
)
CLIENT_SOURCES = ("clients/python",)
HEAVY = ("sqlalchemy", "lightgbm", "pandas", "numpy", "onnx", "onnxruntime", "training_tasks")
BUILD_TIMEOUT_S = 300
DEMO_TIMEOUT_S = 900
DEMO_ORGS = ("acme-corp", "globex", "initech", "vandelay")


def copy_sources(paths: tuple[str, ...], dest: Path) -> Path:
    """A copy of the given project files, so that building leaves nothing in the source tree."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for rel in paths:
        source, target = ROOT / rel, dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)
    return dest


def run(argv: list[str], *, cwd: Path, timeout_s: float = BUILD_TIMEOUT_S) -> str:
    """Run a command to completion (bounded); its output, or a failure that shows it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def build_wheel(project: Path, out: Path) -> Path:
    """The wheel of `project`, built with this virtualenv's setuptools and nothing downloaded."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), "."],
        cwd=project,
    )
    (wheel,) = out.glob("*.whl")
    return wheel


def fresh_venv(path: Path, wheel: Path) -> tuple[Path, Path]:
    """A new virtualenv with `wheel` installed and nothing else; its python and site-packages."""
    run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=path.parent)
    python = path / "bin" / "python"
    site = Path(
        run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=path.parent,
        ).strip()
    )
    # Installed before any dependency is added: the folder of this virtualenv's packages holds
    # a record of the project's editable install, which pip would otherwise try to replace.
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python)]
    run([*pip, "install", "--no-deps", "--no-index", str(wheel)], cwd=path.parent)
    return python, site


def probe(python: Path, code: str, cwd: Path) -> dict:
    """Run `code` (which prints one JSON object) with `python` in `cwd`; the object."""
    return json.loads(run([str(python), "-c", code], cwd=cwd).strip().splitlines()[-1])


def distribution_closure(requirements: list[str]) -> set[str]:
    """The installed distributions `requirements` need (with their extras), transitively."""
    names: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(line) for line in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        names.add(name)
        for line in importlib.metadata.distribution(name).requires or []:
            child = Requirement(line)
            extras = req.extras or {""}
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in extras):
                todo.append(child)
    return names


def link_distributions(names: set[str], site: Path) -> list[str]:
    """Symlink each distribution's top-level files from this virtualenv into `site`."""
    linked: set[str] = set()
    for name in names:
        for file in importlib.metadata.distribution(name).files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top in linked:
                continue
            (site / top).symlink_to(PROJECT_SITE / top)
            linked.add(top)
    return sorted(linked)


def test_the_installed_service_trains_and_deploys_outside_the_source_tree(tmp_path: Path) -> None:
    wheel = build_wheel(copy_sources(SERVICE_SOURCES, tmp_path / "src"), tmp_path / "dist")
    venv = tmp_path / "venv"
    python, site = fresh_venv(venv, wheel)
    # Every dependency from this virtualenv, after the fresh site-packages on sys.path; the
    # project's editable install is not active there (a .pth in an added folder is not read).
    (site / "deps.pth").write_text(f"{PROJECT_SITE}\n")
    work = tmp_path / "work"
    work.mkdir()
    where = probe(
        python,
        "import json, training_tasks, training_client, training_tasks.client as c\n"
        "from training_tasks.config.settings import BUNDLED_SCRIPT as s\n"
        "print(json.dumps({'package': training_tasks.__file__, 'script': str(s.resolve()),"
        " 'script_exists': s.is_file(), 'client': training_client.__file__,"
        " 'same_client': c.TrainingClient is training_client.TrainingClient}))",
        work,
    )
    for key in ("package", "script", "client"):
        assert Path(where[key]).is_relative_to(venv), (
            f"{key} comes from {where[key]}, not the wheel"
        )
    assert where["script_exists"] and where["same_client"]

    base = tmp_path / "ml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "REDIS_", "ML_"))}
    env.update(ML_BASE_PATH=str(base), DATABASE_URL=f"sqlite:///{base / 'training.db'}")
    env.pop("VIRTUAL_ENV", None)
    log_path = tmp_path / "demo.log"
    argv = [str(venv / "bin" / "trainctl"), "demo", "--assets", "8", "--days", "30"]
    demo = spawn_logged(argv, env, log_path, cwd=work)
    try:
        code = demo.wait(timeout=DEMO_TIMEOUT_S)
    finally:
        stop_group(demo)
    output = log_path.read_text(errors="replace")
    assert code == 0, output[-4000:]

    for org in DEMO_ORGS:
        current = base / "models" / org / "current"
        assert (current / "model.onnx").is_file(), f"{org}: no deployed model\n{output[-2000:]}"
    with sqlite3.connect(base / "training.db") as db:
        statuses = dict(
            db.execute(
                "SELECT organization_id, status FROM training_runs WHERE status = 'succeeded'"
            ).fetchall()
        )
    assert set(statuses) == set(DEMO_ORGS), statuses


def test_the_client_installs_next_to_celery_alone_and_imports_nothing_heavy(
    tmp_path: Path,
) -> None:
    client_project = copy_sources(CLIENT_SOURCES, tmp_path / "src") / "clients" / "python"
    wheel = build_wheel(client_project, tmp_path / "dist")
    assert wheel.name.startswith("training_service_client-")
    venv = tmp_path / "venv"
    python, site = fresh_venv(venv, wheel)
    declared = tomllib.loads((client_project / "pyproject.toml").read_text())["project"]
    linked = link_distributions(distribution_closure(declared["dependencies"]), site)
    assert "celery" in linked and "redis" in linked

    found = probe(
        python,
        "import importlib.util, json, sys\n"
        "import training_client\n"
        "from training_client import TrainingClient\n"
        "TrainingClient('redis://127.0.0.1:1/0').close()\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps({'client': training_client.__file__, 'loaded': sorted(sys.modules),"
        " 'installed': [m for m in heavy if importlib.util.find_spec(m) is not None]}))",
        tmp_path,
    )
    assert Path(found["client"]).is_relative_to(venv)
    assert "celery" in found["loaded"]
    assert not set(HEAVY) & set(found["loaded"])
    assert found["installed"] == [], "the virtualenv must hold Celery's distributions only"
