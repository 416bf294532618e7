"""Multi-tenant training service: the Celery app, pipeline stages, registry, database and CLI.

`celery -A training_tasks` finds the app through `app`; it is imported lazily so that
lightweight modules (`training_tasks.client`, `training_tasks.hotswap`) stay cheap to import.
"""

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from training_tasks.celery_app import app

        return app
    raise AttributeError(f"module 'training_tasks' has no attribute {name!r}")
