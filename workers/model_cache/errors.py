"""Errors of the model cache; each message names the organization and says what to do next."""

from __future__ import annotations


class ModelCacheError(Exception):
    """Base of every error the model cache raises on purpose."""


class ModelUnavailable(ModelCacheError):
    """The organization has no verified model to serve; the message says why."""

    def __init__(self, org_id: str, reason: str) -> None:
        self.org_id = org_id
        self.reason = reason
        super().__init__(org_id, reason)

    def __str__(self) -> str:
        return f"no model to serve for organization {self.org_id}: {self.reason}"


class ModelRejected(ModelCacheError):
    """A deployed model file failed a check (path, sha256, ONNX, metadata) and is not served."""
