"""Multi-tenant training service: the Celery app, pipeline stages, registry, database and CLI.

`celery -A training_tasks` finds the app through `app`; it is imported lazily so that
lightweight modules (`training_tasks.messaging.client`, `training_tasks.protocol.hotswap`) stay cheap to import.
"""

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from training_tasks.messaging.app import app

        return app
    raise AttributeError(f"module 'training_tasks' has no attribute {name!r}")
