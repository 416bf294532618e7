"""Modules other services embed stay light: the client needs only Celery, the protocol nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest


def loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_celery_client_imports_neither_sqlalchemy_nor_lightgbm() -> None:
    loaded = loaded_after("training_tasks.client")
    assert "celery" in loaded
    assert not {"sqlalchemy", "lightgbm", "onnxruntime", "pandas"} & loaded


@pytest.mark.parametrize("heavy", ["celery", "sqlalchemy"])
def test_the_hot_swap_protocol_imports_neither_celery_nor_sqlalchemy(heavy: str) -> None:
    assert heavy not in loaded_after("training_tasks.protocol.hotswap")


def test_celeryconfig_imports_without_side_effects() -> None:
    loaded = loaded_after("celeryconfig")
    assert not {"celery", "redis", "sqlalchemy"} & loaded
