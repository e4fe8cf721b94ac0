"""Alembic migrations of the incident archive (run at every start: `store.migrate`)."""
