"""Driver errors of the extract stage's source as service errors: transient or permanent."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import adbc_driver_manager
import psycopg

from training_tasks.errors import ExtractError, SourceUnavailableError
from training_tasks.redaction import mask_url
from training_tasks.stages.extract.plan import SourcePlan


@contextmanager
def source_errors(plan: SourcePlan) -> Iterator[None]:
    """Turn driver errors into the service's errors: unreachable is transient, the rest permanent."""
    try:
        yield
    except (ExtractError, SourceUnavailableError):
        raise
    except Exception as exc:
        raise _translate(exc, plan) from exc


def translate_error(exc: BaseException, org: str, backend: str, masked_url: str) -> Exception:
    """The service error for a driver error: unreachable is transient, everything else permanent."""
    text = _first_line(exc)
    unreachable = (
        isinstance(exc, psycopg.OperationalError | adbc_driver_manager.OperationalError)
        if backend == "postgresql"
        else any(word in text.lower() for word in ("locked", "busy"))
    )
    if unreachable:
        return SourceUnavailableError(
            f"organization {org}: cannot read the SCADA database {masked_url}: {text}; the run "
            "is retried, check that the database is up and reachable from the workers"
        )
    return ExtractError(
        f"organization {org}: reading the SCADA table failed: {text}; check the organization's "
        "schemaConfig and the database user's rights"
    )


def _translate(exc: Exception, plan: SourcePlan) -> Exception:
    text = _first_line(exc)
    mismatch = "Type mismatch in column "
    if plan.backend == "sqlite" and mismatch in text:
        index = int(text.split(mismatch, 1)[1].split(":", 1)[0]) - 1  # column 0 is the flag
        if 0 <= index < len(plan.columns):
            col = plan.columns[index]
            return ExtractError(
                f"organization {plan.organization_id}: {col.field} (column {col.physical!r}) "
                f"holds values of another kind than numbers ({text.split(': ', 1)[-1]}); a "
                f"{col.role} column must hold numbers only: clean the column or choose another"
            )
    return translate_error(exc, plan.organization_id, plan.backend, plan.masked_url)


def _first_line(exc: BaseException | None) -> str:
    lines = str(exc).strip().splitlines()
    return mask_url(lines[0]) if lines else type(exc).__name__
