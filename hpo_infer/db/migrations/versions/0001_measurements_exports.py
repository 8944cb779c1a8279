"""Measurements (every repeat, window and metric), environments and exports.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hpo_infer_environment",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("gpu_name", sa.String(255), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=True),
        sa.Column("gpu_driver", sa.String(64), nullable=True),
        sa.Column("gpu_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("cuda", sa.String(64), nullable=True),
        sa.Column("torch", sa.String(64), nullable=True),
        sa.Column("engine", sa.String(64), nullable=True),
        sa.Column("engine_version", sa.String(64), nullable=True),
        sa.Column("python", sa.String(32), nullable=True),
        sa.Column("platform", sa.String(255), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hpo_infer_environment"),
        sa.UniqueConstraint("fingerprint", name="uq_hpo_infer_environment_fingerprint"),
    )
    op.create_table(
        "hpo_infer_measurement",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("study_name", sa.String(512), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.BigInteger(), nullable=True),
        sa.Column("config_index", sa.Integer(), nullable=True),
        sa.Column("repeat", sa.Integer(), nullable=True),
        sa.Column("window", sa.Integer(), nullable=True),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("environment_id", Id, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["hpo_infer_environment.id"],
            name="fk_hpo_infer_measurement_environment_id_hpo_infer_environment",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_hpo_infer_measurement"),
    )
    op.create_index("ix_hpo_infer_measurement_study_trial", "hpo_infer_measurement", ["study_name", "trial_number"])
    op.create_table(
        "hpo_infer_export",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("study_name", sa.String(512), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("destination", sa.Text(), nullable=False),
        sa.Column("throughput_tok_s", sa.Float(), nullable=True),
        sa.Column("baseline_tok_s", sa.Float(), nullable=True),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("hpo_infer_version", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hpo_infer_export"),
    )
    op.create_index("ix_hpo_infer_export_study_name", "hpo_infer_export", ["study_name"])


def downgrade() -> None:
    op.drop_index("ix_hpo_infer_export_study_name", table_name="hpo_infer_export")
    op.drop_table("hpo_infer_export")
    op.drop_index("ix_hpo_infer_measurement_study_trial", table_name="hpo_infer_measurement")
    op.drop_table("hpo_infer_measurement")
    op.drop_table("hpo_infer_environment")
