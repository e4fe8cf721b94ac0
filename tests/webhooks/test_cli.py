"""`tocsin webhooks ...`, `status-update`, `subscribe`, and the `webhooks` /
`status_subscriptions` sections of `tocsin apply` and `export`, against real services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli_runner import as_json, run_cli
from tests.notification.stack import PagingStack
from tests.webhooks.conftest import SECRET
from tests.webhooks.receiver import Receiver
from tests.webhooks.test_subscriptions import pump
from tocsin.client.export import _webhooks
from tocsin.client.webhook_config import secret_fingerprint


def targets(stack: PagingStack) -> dict[str, str]:
    endpoints = stack.client.endpoints
    return {
        "scheduling": endpoints.scheduling,
        "incidents": endpoints.incidents,
        "notification": endpoints.notification,
    }


async def test_webhook_commands(
    stack: PagingStack, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cli(*argv: str) -> tuple[int, str, str]:
        return await run_cli(monkeypatch, targets(stack), *argv)

    monkeypatch.setenv("OPS_SECRET", SECRET)
    code, out, err = await cli(
        "webhooks", "add", "ops", receiver.url, "--secret-env", "OPS_SECRET", "--event", "triggered"
    )
    assert code == 0, err
    assert "tok-5678" not in out and SECRET not in out
    code, out, _ = await cli("webhooks", "list", "--json")
    assert as_json(out) == [
        {
            "id": "ops",
            "url": receiver.url.split("/hook")[0] + "/...",
            "event_types": ["triggered"],
            "service_ids": [],
            "secret_fingerprint": secret_fingerprint(SECRET),
            "allow_insecure_http": False,
        }
    ]
    code, out, _ = await cli("webhooks", "test", "ops")
    assert code == 0 and "HTTP 200" in out and receiver.requests[-1]["verified"]
    incident_id = await stack.trigger(mirror=False)
    await pump(stack)
    code, out, _ = await cli("webhooks", "deliveries", "ops", "--json")
    [delivery] = as_json(out)["deliveries"]
    assert delivery["incident_id"] == incident_id and delivery["outcome"] == "delivered"
    number = str((await stack.incident(incident_id)).number)
    code, out, _ = await cli(
        "subscribe", "--incident", f"#{number}", "email", "boss@example.org", "--id", "boss"
    )
    assert code == 0, out
    code, out, err = await cli("subscriptions", "--json")
    assert code == 0, err
    assert [s["id"] for s in as_json(out)] == ["boss"]
    code, out, err = await cli("status-update", number, "all good now")
    assert code == 0, err
    incident = await stack.incident(incident_id)
    assert incident.timeline[-1].message == "all good now"
    code, _, _ = await cli("unsubscribe", "boss")
    code, out, err = await cli("webhooks", "add", "bad", "http://example.com/x")
    assert code == 1 and "webhook.url" in err
    code, _, _ = await cli("webhooks", "remove", "ops")
    assert code == 0
    code, out, _ = await cli("webhooks", "list", "--json")
    assert as_json(out) == []


CONFIG = """\
webhooks:
  - id: ops-events
    url: {url}
    secret_env: OPS_SECRET
    event_types: [triggered, resolved]
    services: [payments-api]
status_subscriptions:
  - id: cfo
    service: payments-api
    type: email
    address: cfo@example.org
"""


async def test_apply_and_export(
    stack: PagingStack,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("OPS_SECRET", SECRET)
    path = tmp_path / "hooks.yaml"
    path.write_text(CONFIG.format(url=receiver.url))
    code, out, err = await run_cli(monkeypatch, targets(stack), "apply", "-f", str(path))
    assert code == 0, err
    assert "create webhook ops-events" in out and "create status subscription cfo" in out
    code, out, err = await run_cli(monkeypatch, targets(stack), "apply", "-f", str(path))
    assert code == 0, err
    assert "ops-events" not in out and "cfo" not in out  # nothing to change
    # A new secret is a change (compared by fingerprint).
    monkeypatch.setenv("OPS_SECRET", SECRET + "-rotated")
    code, out, err = await run_cli(monkeypatch, targets(stack), "apply", "-f", str(path))
    assert "update webhook ops-events" in out, err
    exported: dict[str, Any] = {}
    await _webhooks(stack.client, exported)
    assert exported == {
        "webhooks": [
            {
                "id": "ops-events",
                "url": receiver.url,
                "secret_env": "OPS_SECRET",
                "event_types": ["resolved", "triggered"],
                "services": ["payments-api"],
            }
        ],
        "status_subscriptions": [
            {"id": "cfo", "service": "payments-api", "type": "email", "address": "cfo@example.org"}
        ],
    }
    # Problems are reported with file:line, nothing written.
    monkeypatch.delenv("OPS_SECRET")
    path.write_text(CONFIG.format(url=receiver.url).replace("resolved]", "paged]"))
    code, out, err = await run_cli(monkeypatch, targets(stack), "apply", "-f", str(path))
    assert code != 0
    assert f"{path}:4: webhooks[0].secret_env: $OPS_SECRET is not set" in err
    assert f"{path}:5: webhooks[0].event_types[1]: unknown event type 'paged'" in err
