"""Alembic environment: migrations run on the connection `store.migrate` hands over (in
`config.attributes["connection"]`), inside its transaction, so several replicas starting
at once apply each migration once (PostgreSQL: under an advisory lock)."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
