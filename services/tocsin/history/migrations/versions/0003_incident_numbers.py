"""Incident numbers: `incidents.number`, the number people say ("#18"), so the archive
finds an incident by the number the console, the CLI and the pages show.

Rows archived before numbers existed are backfilled from their stored protobuf (its
`number` field, 0 = none: NULL).

Revision ID: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tocsin.v1 import incidents_pb2

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BATCH = 5000


def upgrade() -> None:
    op.add_column("incidents", sa.Column("number", sa.BigInteger))
    op.create_index("incidents_number", "incidents", ["number"])
    table = sa.table(
        "incidents",
        sa.column("id", sa.BigInteger),
        sa.column("proto", sa.LargeBinary),
        sa.column("number", sa.BigInteger),
    )
    bind = op.get_bind()
    after = -1
    while True:
        rows = bind.execute(
            sa.select(table.c.id, table.c.proto)
            .where(table.c.id > after)
            .order_by(table.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        numbered = [
            {"row_id": row.id, "number": number}
            for row in rows
            if row.proto and (number := incidents_pb2.Incident.FromString(row.proto).number)
        ]
        if numbered:
            bind.execute(
                table.update()
                .where(table.c.id == sa.bindparam("row_id"))
                .values(number=sa.bindparam("number")),
                numbered,
            )
        after = rows[-1].id


def downgrade() -> None:
    op.drop_index("incidents_number", "incidents")
    op.drop_column("incidents", "number")
