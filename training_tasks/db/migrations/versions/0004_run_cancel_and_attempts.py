"""training_runs: a stored cancel request and the log of failed attempts; audit events by event

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-15 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("cancel_requested_by", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.JSON(), nullable=True))
    op.create_index("ix_audit_events_event", "audit_events", ["event"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_events_event", table_name="audit_events")
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_column("attempts")
        batch_op.drop_column("cancel_requested_by")
        batch_op.drop_column("cancel_requested_at")
