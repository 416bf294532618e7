"""The broker as the CLI sees it, so that no layer above this one imports Celery or kombu:
the error a lost broker raises, and whether a named worker answers a ping."""

from __future__ import annotations

from kombu.exceptions import OperationalError as BrokerUnavailable

__all__ = ["BrokerUnavailable", "WorkerProbe"]


class WorkerProbe:
    """Pings one worker through the broker at `broker_url`; close it when done."""

    def __init__(self, broker_url: str) -> None:
        from celery import Celery  # a whole app (0.2 s), only to ping

        self._app = Celery(broker=broker_url)

    def answers(self, worker_name: str, timeout_s: float) -> bool:
        """Whether `worker_name` replied to a ping within `timeout_s` seconds."""
        return bool(self._app.control.ping(destination=[worker_name], timeout=timeout_s))

    def close(self) -> None:
        self._app.close()
