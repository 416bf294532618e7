"""Run `celery beat` with the scheduler's clock read from a file that the test moves.

    python -m tests.support.beat_clock CLOCK_FILE -A training_tasks beat ...

The file holds {"now": "<ISO time>"}; beat sleeps in real time but decides what is due by it.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path


def main() -> None:
    clock_file = Path(sys.argv[1])

    def clock() -> datetime:
        return datetime.fromisoformat(json.loads(clock_file.read_text())["now"])

    from beat_schedules.scheduler import DatabaseScheduler

    DatabaseScheduler.clock = staticmethod(clock)  # type: ignore[method-assign]
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", *sys.argv[2:]]
    celery_main()


if __name__ == "__main__":
    main()
