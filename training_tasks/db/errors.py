"""The service database's errors under the service's own names, for layers that must tell them
apart (retry, report, give up) and never import SQLAlchemy or Alembic themselves."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError as StatementError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import SQLAlchemyError as DatabaseError

__all__ = ["DATABASE_UNREACHABLE", "DatabaseError", "StatementError", "is_migration_error"]

# The database went away, refused the connection or dropped it: worth another attempt.
DATABASE_UNREACHABLE = (OperationalError, InterfaceError)


def is_migration_error(exc: BaseException) -> bool:
    """Alembic refused to migrate the schema (for instance, one this version does not know)."""
    from alembic.util.exc import CommandError  # Alembic (0.25 s) loads only on this error path

    return isinstance(exc, CommandError)
