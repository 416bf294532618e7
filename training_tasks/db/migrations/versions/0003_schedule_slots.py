"""Schedules keep a revision and the instant they are settled to; schedule_slots records each slot

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_schedules", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(sa.Column("settled_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_training_schedules_next_run_at", ["next_run_at", "organization_id"], unique=False
        )
    op.execute("UPDATE training_schedules SET settled_until = updated_at, next_run_at = NULL")
    op.create_table(
        "schedule_slots",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("organization_id", sa.String(length=63), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("pattern", sa.String(length=128), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_schedule_slots_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["training_runs.id"], name=op.f("fk_schedule_slots_run_id_training_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_slots")),
        sa.UniqueConstraint("organization_id", "scheduled_for", name="uq_schedule_slots_org_slot"),
    )


def downgrade() -> None:
    op.drop_table("schedule_slots")
    with op.batch_alter_table("training_schedules", schema=None) as batch_op:
        batch_op.drop_index("ix_training_schedules_next_run_at")
        batch_op.drop_column("settled_until")
        batch_op.drop_column("revision")
