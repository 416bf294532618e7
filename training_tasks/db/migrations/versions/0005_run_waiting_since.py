"""training_runs.waiting_since: since when a run waits for its next stage's message

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-20 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_training_runs_waiting_since", "training_runs", ["waiting_since"], unique=False
    )
    # Active runs nobody holds wait since they were queued; the reaper judges them from there.
    op.execute(
        "UPDATE training_runs SET waiting_since = queued_at "
        "WHERE status IN ('queued', 'running') AND lease_owner IS NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_training_runs_waiting_since", table_name="training_runs")
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_column("waiting_since")
