"""The incident archive: incidents, alerts, events, timeline, pages, full-text search.

Times are milliseconds since the epoch (UTC) in BIGINT columns: the same on SQLite and
PostgreSQL, and what the rest of tocsin counts in. Full-text search: an FTS5 table kept
by triggers (SQLite), a stored generated tsvector with a GIN index (PostgreSQL).

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("dedup_key", sa.Text, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("severity", sa.SmallInteger, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_ms", sa.BigInteger, nullable=False),
        sa.Column("acknowledged_by", sa.Text, nullable=False, server_default=""),
        sa.Column("resolved_ms", sa.BigInteger),
        sa.Column("resolved_by", sa.Text, nullable=False, server_default=""),
        sa.Column("first_response_ms", sa.BigInteger),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("synced_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("sync_due", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("search_text", sa.Text, nullable=False, server_default=""),
        sa.Column("proto", sa.LargeBinary, nullable=False),
    )
    op.create_index("incidents_service_created", "incidents", ["service_id", "created_ms"])
    op.create_index("incidents_created", "incidents", ["created_ms"])
    op.create_index("incidents_service_dedup", "incidents", ["service_id", "dedup_key"])
    op.create_index("incidents_sync_due", "incidents", ["sync_due"])
    op.create_table(
        "alerts",
        sa.Column("incident_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("alert_id", sa.String(20), primary_key=True),
        sa.Column("received_ms", sa.BigInteger, nullable=False),
        sa.Column("proto", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("incident_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("actor_user", sa.Text, nullable=False),
        sa.Column("actor_display", sa.Text, nullable=False),
        sa.Column("actor_channel", sa.SmallInteger, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
    )
    op.create_table(
        "timeline",
        sa.Column("incident_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("proto", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "pages",
        sa.Column("incident_id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("epoch", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("loop", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("level", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("pages_at", "pages", ["at_ms"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE incidents ADD COLUMN search_vector tsvector "
            "GENERATED ALWAYS AS (to_tsvector('english', search_text)) STORED"
        )
        op.execute("CREATE INDEX incidents_search ON incidents USING GIN (search_vector)")
    else:
        op.execute(
            "CREATE VIRTUAL TABLE incidents_fts USING fts5(search_text, content='incidents', "
            "content_rowid='id', tokenize='porter unicode61')"
        )
        op.execute(
            "CREATE TRIGGER incidents_fts_insert AFTER INSERT ON incidents BEGIN "
            "INSERT INTO incidents_fts(rowid, search_text) VALUES (new.id, new.search_text); END"
        )
        op.execute(
            "CREATE TRIGGER incidents_fts_delete AFTER DELETE ON incidents BEGIN "
            "INSERT INTO incidents_fts(incidents_fts, rowid, search_text) "
            "VALUES ('delete', old.id, old.search_text); END"
        )
        op.execute(
            "CREATE TRIGGER incidents_fts_update AFTER UPDATE OF search_text ON incidents "
            "WHEN old.search_text IS NOT new.search_text BEGIN "
            "INSERT INTO incidents_fts(incidents_fts, rowid, search_text) "
            "VALUES ('delete', old.id, old.search_text); "
            "INSERT INTO incidents_fts(rowid, search_text) VALUES (new.id, new.search_text); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.execute("DROP TABLE incidents_fts")
    for table in ("pages", "timeline", "events", "alerts", "incidents"):
        op.drop_table(table)
