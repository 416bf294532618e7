"""The service database itself: engines, the tables, the Alembic migrations, and its errors under
the service's names (`errors`). Imports only `config` (for DATABASE_URL) and below; `registry`
is the only layer that queries these tables."""
