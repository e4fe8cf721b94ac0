"""Late timeline entries, gap recovery and retention.

- `incidents.recheck_ms`: when the timeline copier next copies an incident again after
  its last copy (late delivery outcomes and notes appended after the resolution), NULL =
  never (see `store.next_recheck`).
- `archive_marks`: small named values the archive keeps durably (the time from which the
  archive must be reconciled with Redis after its stream fell behind a trim).
- indexes for the retention sweep (`resolved_ms`) and the re-checks.

Revision ID: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("incidents", sa.Column("recheck_ms", sa.BigInteger))
    op.create_index("incidents_recheck", "incidents", ["recheck_ms"])
    op.create_index("incidents_resolved", "incidents", ["resolved_ms"])
    op.create_table(
        "archive_marks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("archive_marks")
    op.drop_index("incidents_resolved", "incidents")
    op.drop_index("incidents_recheck", "incidents")
    op.drop_column("incidents", "recheck_ms")
