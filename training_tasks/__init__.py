"""Multi-tenant training service. Packages, each importing only the ones below it (make lint):

cli > demo, ui > service > messaging > pipeline > stages > sandbox, reports > registry, runtime >
db > config > protocol > fields, files, redaction > errors (docs/development.md). `celery -A
training_tasks` finds the app through `app`; it is imported lazily so that light modules (`training_tasks.client`,
`training_tasks.protocol`) stay cheap to import.
"""

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from training_tasks.messaging.app import app

        return app
    raise AttributeError(f"module 'training_tasks' has no attribute {name!r}")
