"""The archive's migrations on a database made by an earlier release: 0003 gives incidents
archived before numbers the number their stored protobuf carries, and the archive then
finds them by it."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig

from tocsin.history.store import MIGRATIONS, ArchiveStore
from tocsin.v1 import incidents_pb2


def _upgrade(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()


async def test_numbers_are_backfilled_from_the_stored_incidents(tmp_path: Path) -> None:
    path = tmp_path / "archive.sqlite3"
    _upgrade(f"sqlite:///{path}", "0002")
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        for incident_id, number in ((31, 7), (17, 8), (40, 0)):  # 0: opened before numbers
            proto = incidents_pb2.Incident(id=str(incident_id), number=number, summary="x")
            connection.execute(
                sa.text(
                    "INSERT INTO incidents (id, service_id, dedup_key, status, severity,"
                    " summary, created_ms, updated_ms, version, proto)"
                    " VALUES (:id, 'api', 'k', 1, 1, 'x', :id, :id, 1, :proto)"
                ),
                {"id": incident_id, "proto": proto.SerializeToString()},
            )
    engine.dispose()

    store = ArchiveStore(f"sqlite:///{path}")
    await store.migrate()  # 0003 onwards, as the history service does at start
    try:
        found = await store.incident("#7")
        assert found is not None and found.id == 31 and found.number == 7
        found = await store.incident("#8")
        assert found is not None and found.id == 17
        assert await store.incident("#40") is None  # no incident has number 40
        found = await store.incident("40")  # the id still names it
        assert found is not None and found.number is None
        assert await store.incident("#x") is None
    finally:
        await store.close()
