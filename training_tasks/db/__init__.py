"""The service database itself: engines, the tables and the Alembic migrations.
Imports nothing of the service; `registry` is the only layer that queries these tables."""
