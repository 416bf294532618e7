"""Helpers for processes the service starts and must not leave behind."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec: ask Linux to send SIGTERM when the parent process dies.

    A worker left behind by a killed parent would go on consuming its queues.
    """
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
