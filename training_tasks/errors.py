"""The service's error hierarchy: transient errors are retried, permanent ones fail the run now.

Every message names the organization and, where there is one, the version or path, and ends
with what to do next.
"""

from __future__ import annotations


class TrainingServiceError(Exception):
    """Base of every error the service raises on purpose."""

    transient = False


class TransientError(TrainingServiceError):
    """A failure that may go away on its own (a connection reset, a busy database): retry."""

    transient = True


class PermanentError(TrainingServiceError):
    """A failure that retrying will not fix (bad input, a rejected model): fail now."""


class ConfigError(PermanentError):
    """A setting, a request or an organization config is invalid; the message names the field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        # Keep both parts in args so the error survives Celery's JSON round trip.
        super().__init__(field, problem)

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


class SettingsError(ConfigError):
    """An environment variable read at start-up is invalid."""


class NotFoundError(PermanentError):
    """An organization, run or version that was asked for does not exist."""


class OrgNotRegistered(NotFoundError):
    """An organization id the registry does not hold; the message says how to register it."""

    def __init__(self, org_id: str) -> None:
        super().__init__(
            f"organization {org_id} is not registered; register it with "
            f"`trainctl org create {org_id} --config org.json`"
        )


class ConflictError(PermanentError):
    """The request clashes with the current state (a run already active, a stale deploy)."""


class ExtractError(PermanentError):
    """The organization's data cannot be extracted as configured."""


class SourceUnavailableError(TransientError):
    """The organization's SCADA database cannot be reached right now."""


class TrainingError(PermanentError):
    """The training script failed, timed out or broke the script contract."""


class TrainingKilled(TransientError):
    """The training process was killed by a signal it did not ask for (OOM killer, crash, kill)."""


class Cancelled(PermanentError):
    """Somebody cancelled the run; it stops where it is and is not retried."""


class InsufficientDisk(PermanentError):
    """The model store has too little free space for the run; nothing was started."""


class ValidationRejected(PermanentError):
    """The trained model failed one or more validation checks; nothing was deployed."""

    def __init__(self, message: str, failures: list[str]) -> None:
        self.message = message
        self.failures = failures
        super().__init__(message, failures)

    def __str__(self) -> str:
        return self.message


class DeployError(PermanentError):
    """A deployment could not be completed; the previous model keeps serving."""


class LeaseHeld(TrainingServiceError):
    """Another live worker holds this run; a duplicate delivery must do nothing."""


class RunFinished(TrainingServiceError):
    """The run is already finished; a late or repeated message must do nothing."""


class VersionNotFound(NotFoundError, DeployError):
    """A version asked for is not one of the organization's own (whether or not it exists)."""


class StageOutOfMemory(PermanentError):
    """A stage ran out of memory in the worker; the run fails, the worker and its other runs live."""
