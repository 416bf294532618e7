"""The layering rule is enforced: `lint-imports` passes on the code, and an import that breaks
a contract on purpose fails it, naming the contract. Run on a copy of the packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("training_tasks", "workers", "beat_schedules")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def add_import(path: Path, line: str) -> None:
    text = path.read_text()
    head, _, rest = text.partition("from __future__ import annotations\n")
    path.write_text(f"{head}from __future__ import annotations\n{line}  # noqa\n{rest}")


def test_the_code_keeps_every_contract(tree: Path) -> None:
    done = lint_imports(tree)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "training_tasks/protocol/ids.py",
            "import celery",
            "protocol and config never import Celery, kombu or SQLAlchemy",
        ),
        (
            "training_tasks/registry/runs.py",
            "from training_tasks.pipeline import submit",
            "training_tasks layers",
        ),
        (
            "workers/model_cache/model.py",
            "from training_tasks.config import settings",
            "workers.model_cache imports only training_tasks.protocol",
        ),
        (
            "training_tasks/pipeline/leases.py",
            "import celery",
            "messaging is the only package of training_tasks that imports Celery or kombu",
        ),
        (
            "training_tasks/service/api.py",
            "import sqlalchemy",
            "Only registry, db and runtime use SQLAlchemy for the service database",
        ),
        (
            "training_tasks/registry/schedules.py",
            "from training_tasks.registry import orgs",
            "No import cycle between the modules or packages of one package",
        ),
    ],
)
def test_an_import_that_breaks_the_rule_fails_naming_the_contract(
    tree: Path, module: str, line: str, contract: str
) -> None:
    add_import(tree / module, line)
    done = lint_imports(tree)
    assert done.returncode != 0
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in " ".join(broken.split()), done.stdout[-3000:]
