"""The incident archive loses nothing and duplicates nothing when the history process is
killed -9 while events flow.

`tocsin up` (embedded Redis, SQLite archive); incidents are opened, noted and resolved
through gRPC one after another while the history process is killed twice (the supervisor
restarts it, and it resumes the stream entries it had received and not acknowledged).
Then every incident is in the archive, resolved, with exactly one note, and a rebuild from
the streams changes nothing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, wait_for
from tocsin.client.client import SyncTocsinClient
from tocsin.client.endpoints import Endpoints
from tocsin.v1 import common_pb2, history_pb2, incidents_pb2

pytestmark = pytest.mark.slow

INCIDENTS = 60
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "oncall.yaml"


def _client(stack: Stack) -> SyncTocsinClient:
    env = stack.env
    names = ("scheduling", "incidents", "escalation", "notification", "history")
    return SyncTocsinClient(
        Endpoints(
            http=env["TOCSIN_HTTP_ADDR"],
            **{n: env[f"TOCSIN_{n.upper()}_ADDR"] for n in names},
        )
    )


def _archived(client: SyncTocsinClient) -> list[history_pb2.ArchivedIncident]:
    reply = client.history.SearchIncidents(
        history_pb2.SearchIncidentsRequest(query="", service_ids=["payments-api"], page_size=500),
        timeout=10,
    )
    return [hit.incident for hit in reply.hits]


def test_killing_history_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "data")
    stack.start()
    try:
        stack.wait_healthy()
        stack.cli("apply", "-f", str(EXAMPLE))
        client = _client(stack)
        actor = common_pb2.Actor(user_id="alice", channel=common_pb2.CHANNEL_CLI)
        opened: list[str] = []
        failures: list[BaseException] = []

        def work() -> None:
            try:
                for n in range(INCIDENTS):
                    reply = client.incidents.Trigger(
                        incidents_pb2.TriggerRequest(
                            service_id="payments-api",
                            summary=f"disk full on db{n}",
                            dedup_key=f"disk-{n}",
                        ),
                        timeout=10,
                    )
                    incident_id = reply.incident.id
                    opened.append(incident_id)
                    client.incidents.AddNote(
                        incidents_pb2.AddNoteRequest(
                            incident_id=incident_id, text=f"fixed db{n}", actor=actor
                        ),
                        timeout=10,
                    )
                    client.incidents.Resolve(
                        incidents_pb2.ResolveRequest(incident_id=incident_id, actor=actor),
                        timeout=10,
                    )
                    time.sleep(0.1)  # pacing real traffic, so the kills land mid-stream
            except BaseException as error:  # reported by the test thread
                failures.append(error)

        worker = threading.Thread(target=work)
        worker.start()
        for at in (INCIDENTS // 3, 2 * INCIDENTS // 3):
            wait_for(lambda at=at: len(opened) >= at or not worker.is_alive(), 60, "incidents")
            killed = stack.kill_child("history")
            stack.wait_restarted("history", killed)
        worker.join(120)
        assert not failures, failures
        assert len(opened) == INCIDENTS

        def complete() -> bool:
            archived = _archived(client)
            return len(archived) == INCIDENTS and all(
                a.incident.status == incidents_pb2.INCIDENT_STATUS_RESOLVED for a in archived
            )

        wait_for(complete, 60, "every incident archived as resolved")
        archived = {a.incident.id: a for a in _archived(client)}
        assert sorted(archived) == sorted(opened)
        for n, incident_id in enumerate(opened):
            assert [note.text for note in archived[incident_id].notes] == [f"fixed db{n}"]
        before = _archived(client)
        client.history.RebuildArchive(history_pb2.RebuildArchiveRequest(), timeout=120)
        assert _archived(client) == before
        client.close()
    finally:
        stack.stop()
