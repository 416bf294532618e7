"""What every `trainctl` command shares: the service it talks to and JSON output."""

from __future__ import annotations

import json
from typing import Any

import click


def _service() -> Any:
    from training_tasks.service import TrainingService

    return TrainingService()


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))
