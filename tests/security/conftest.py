"""What the training sandbox manages to isolate on this host, for tests that need it."""

from __future__ import annotations

import pytest

from training_tasks.sandbox.runner import ResourceLimits, allowed_env, run_sandboxed


@pytest.fixture(scope="session")
def isolation(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    """What the sandbox manages to isolate on this host (`pid`, `readonly`, `tmp`, ...)."""
    result = run_sandboxed(
        ["true"],
        cwd=tmp_path_factory.mktemp("probe"),
        env=allowed_env(),
        timeout_s=10,
        limits=ResourceLimits(memory_mb=1024),
    )
    return result.isolation


def needs(isolation: frozenset[str], *parts: str) -> None:
    """Skip the test, saying why, unless the sandbox isolates all of `parts` here."""
    if missing := set(parts) - isolation:
        pytest.skip(f"this host does not allow {', '.join(sorted(missing))} isolation")
