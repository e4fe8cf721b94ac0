"""The console's Me, Admin and Reports pages in a real browser against the real stack.

Me: a contact method with a bad phone number is refused with the service's error naming
the field and nothing is written; a good one is stored (the CLI shows it); an API key is
shown once, listed and revoked. Admin: a responder has no Admin link and gets 403; an
admin sees the services with the URLs to paste, changes a role, and the change is in the
audit log as theirs. Reports: the charts are server-rendered SVG.

With TOCSIN_SCREENSHOTS=1 the pages are saved under docs/ (console-me.png, ...).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from playwright.sync_api import expect

from tests.console.conftest import ConsoleStack
from tocsin.v1 import common_pb2, incidents_pb2, notification_pb2, scheduling_pb2

pytestmark = pytest.mark.slow

QUIET_KEY = "8" * 32
"""quiet-api pages nobody (its policy's only person has no contact method)."""
DOCS = Path(__file__).parents[2] / "docs"


def screenshot(page: Any, name: str) -> None:
    if os.environ.get("TOCSIN_SCREENSHOTS"):
        page.screenshot(path=str(DOCS / f"console-{name}.png"), full_page=True)


def methods_of(console: ConsoleStack, user: str) -> list[notification_pb2.ContactMethod]:
    reply = console.paging.client.notification.GetUserNotificationSettings(
        notification_pb2.GetUserNotificationSettingsRequest(user_id=user), timeout=10
    )
    return list(reply.contact_methods)


def test_contact_methods_are_validated_like_the_api(console: ConsoleStack, page: Any) -> None:
    console.sign_in(page, "rosa")
    before = methods_of(console, "rosa")
    page.goto(f"{console.url}/me")
    expect(page.get_by_role("heading", name="My contact methods")).to_be_visible()
    add = page.get_by_role("form", name="Add a contact method")
    add.get_by_label("Type").select_option("sms")
    add.get_by_label("Address").fill("call me maybe")
    add.get_by_role("button", name="Add contact method").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("contact_method.address")
    assert methods_of(console, "rosa") == before  # nothing written
    expect(add.get_by_label("Address")).to_have_value("call me maybe")  # kept to fix

    add.get_by_label("Address").fill("+1 500 555 0102")
    add.get_by_label("Name (optional)").fill("rosa-desk")
    add.get_by_role("button", name="Add contact method").click()
    expect(page.get_by_role("status")).to_contain_text("rosa-desk added")
    stored = {m.id: m.address for m in methods_of(console, "rosa")}
    assert stored["rosa-desk"] == "+15005550102"  # normalised by the service
    assert "rosa-desk" in console.paging.stack.cli("user", "rosa")
    expect(page.get_by_label("Address of rosa-desk")).to_have_value("+15005550102")

    # An API key: shown once, listed, revoked.
    keys = page.get_by_role("form", name="Create an API key")
    keys.get_by_label("Key name").fill("rosa-laptop")
    keys.get_by_role("button", name="Create API key").click()
    key = page.locator("#new-api-key")
    expect(key).to_have_count(1)
    assert len(key.inner_text().strip()) > 20
    # POST-redirect-GET: the page showing the key is a GET of /me, so reloading it creates
    # no second key, and shows the secret no more.
    assert page.url.split("#")[0] == f"{console.url}/me"
    page.reload()
    expect(page.get_by_role("button", name="Revoke rosa-laptop")).to_have_count(1)
    expect(page.locator("#new-api-key")).to_have_count(0)  # never shown again
    page.goto(f"{console.url}/me")
    expect(page.locator("#new-api-key")).to_have_count(0)
    screenshot(page, "me")
    page.get_by_role("button", name="Revoke rosa-laptop").click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    expect(page.get_by_role("button", name="Revoke rosa-laptop")).to_have_count(0)

    page.get_by_role("button", name="Remove rosa-desk").click()
    expect(page.get_by_role("status")).to_contain_text("rosa-desk removed")
    assert "rosa-desk" not in {m.id for m in methods_of(console, "rosa")}


def test_a_responder_cannot_open_admin(console: ConsoleStack, page: Any) -> None:
    console.sign_in(page, "rosa")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Me", exact=True)).to_be_visible()
    expect(nav.get_by_role("link", name="Admin")).to_have_count(0)
    response = page.goto(f"{console.url}/admin")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="Services")).to_have_count(0)
    # A forged role change (with the session's own CSRF token) is refused too.
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    forged = httpx.post(
        f"{console.url}/admin/users/rosa/role",
        data={"csrf": csrf or "", "role": "admin"},
        cookies=cookies,
        follow_redirects=False,
    )
    assert forged.status_code == 403
    user = console.paging.client.scheduling.GetUser(
        scheduling_pb2.GetUserRequest(id="rosa"), timeout=10
    ).user
    assert user.role != common_pb2.ROLE_ADMIN


def test_an_admin_changes_a_role_and_the_audit_log_shows_it(
    console: ConsoleStack, page: Any
) -> None:
    console.sign_in(page, "adam")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Services")).to_be_visible()
    shop = page.get_by_role("region", name="Web shop (web-shop)")
    expect(shop).to_contain_text("7" * 32)
    expect(shop).to_contain_text("/v2/enqueue")
    expect(shop).to_contain_text("/v1/alertmanager/" + "7" * 32)
    page.get_by_label("Role of quinn").select_option("observer")
    page.get_by_role("button", name="Change role of quinn").click()
    expect(page.get_by_role("status")).to_contain_text("quinn is now observer")
    expect(page.get_by_label("Role of quinn")).to_have_value("observer")
    first = page.locator("table.audit tbody tr").first
    expect(first).to_contain_text("user.update")
    expect(first).to_contain_text("adam")
    expect(first).to_contain_text("quinn")
    user = console.paging.client.scheduling.GetUser(
        scheduling_pb2.GetUserRequest(id="quinn"), timeout=10
    ).user
    assert user.role == common_pb2.ROLE_OBSERVER
    screenshot(page, "admin")

    # Two incidents on quiet-api (it pages nobody), acknowledged and resolved: the report.
    ids = []
    for dedup, summary in (("report-1", "disk 91% full on db-eu-3"), ("report-2", "cron late")):
        console.paging.enqueue(QUIET_KEY, "trigger", dedup, summary)
        ids.append(console.paging.incident("quiet-api", dedup).id)
    time.sleep(2)  # 20 virtual seconds to acknowledge
    for incident_id in ids:
        console.paging.client.incidents.Acknowledge(
            incidents_pb2.AcknowledgeRequest(incident_id=incident_id), timeout=10
        )
    time.sleep(3)
    for incident_id in ids:
        console.paging.client.incidents.Resolve(
            incidents_pb2.ResolveRequest(incident_id=incident_id), timeout=10
        )
    page.get_by_role("link", name="Reports: MTTA, MTTR and on-call load").click()
    expect(page.get_by_role("heading", name="Reports", exact=True)).to_be_visible()
    total = page.locator("table.list tbody tr").first
    deadline = time.monotonic() + 30
    while "all services 2" not in " ".join(total.inner_text().split()):
        assert time.monotonic() < deadline, total.inner_text()  # archived by history
        time.sleep(0.5)
        page.reload()
    expect(page.get_by_role("cell", name="quiet-api")).to_be_visible()
    chart = page.get_by_role("img", name="Two charts")
    expect(chart).to_be_visible()
    src = chart.get_attribute("src")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    svg = httpx.get(f"{console.url}{src}", cookies=cookies)
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg") and "MTTA and MTTR per week" in svg.text
    assert "<script" not in svg.text
    screenshot(page, "reports")


def test_rules_edits_and_a_test_page(console: ConsoleStack, page: Any) -> None:
    pager = console.paging.pager()
    pager.person("rosa", "+15005550101")
    console.sign_in(page, "rosa")
    page.goto(f"{console.url}/me")
    # Editing an address is validated like adding one: refused naming the field.
    before = methods_of(console, "rosa")
    page.get_by_label("Address of rosa-voice").fill("not a number")
    page.get_by_role("button", name="Save rosa-voice").click()
    expect(page.get_by_role("alert")).to_contain_text("contact_method.address")
    assert methods_of(console, "rosa") == before

    # The rules: the voice call after 5 minutes instead of 2, a low-urgency SMS added.
    page.goto(f"{console.url}/me")
    page.get_by_label("Rule 2 minutes").fill("5")
    page.get_by_label("Rule 3 contact method").select_option("rosa-sms")
    page.get_by_label("Rule 3 minutes").fill("x")
    page.get_by_role("button", name="Save rules").click()
    expect(page.get_by_role("alert")).to_contain_text("rules[2].delay")
    page.goto(f"{console.url}/me")
    page.get_by_label("Rule 2 minutes").fill("5")
    page.get_by_label("Rule 3 contact method").select_option("rosa-sms")
    page.get_by_label("Rule 3 minutes").fill("10")
    page.get_by_label("Rule 3 urgency").select_option("low")
    page.get_by_role("button", name="Save rules").click()
    expect(page.get_by_role("status")).to_contain_text("rules saved")
    rules = console.paging.client.notification.GetUserNotificationSettings(
        notification_pb2.GetUserNotificationSettingsRequest(user_id="rosa"), timeout=10
    ).rules
    assert [(r.contact_method_id, r.delay.seconds, r.urgency or 1) for r in rules] == [
        ("rosa-sms", 0, common_pb2.URGENCY_HIGH),  # unset is high
        ("rosa-voice", 300, common_pb2.URGENCY_HIGH),
        ("rosa-sms", 600, common_pb2.URGENCY_LOW),
    ]

    page.get_by_role("button", name="Send me a test page").click()
    expect(page.get_by_role("status")).to_contain_text("Test page sent to 2 contact methods")
    pager.expect_sms("rosa", "test page for Rosa Reyes")
    pager.expect_voice("rosa", "test call for Rosa Reyes")


def handoff_notices_of(console: ConsoleStack, user: str) -> list[str]:
    reply = console.paging.client.scheduling.GetUser(
        scheduling_pb2.GetUserRequest(id=user), timeout=10
    )
    return list(reply.user.handoff_notices)


def test_handoff_notices_are_set_on_me_and_checked_like_the_api(
    console: ConsoleStack, page: Any
) -> None:
    console.sign_in(page, "rosa")
    page.goto(f"{console.url}/me")
    form = page.get_by_role("form", name="Hand-off notices")
    expect(page.get_by_role("heading", name="My shift hand-off notices")).to_be_visible()
    form.get_by_label("When a shift of mine starts").check()
    form.get_by_label("A day (24 hours) before a shift of mine starts").check()
    form.get_by_role("button", name="Save hand-off notices").click()
    # POST, then redirected to GET /me saying so; the boxes show what is stored.
    expect(page.get_by_role("status")).to_contain_text("Hand-off notices saved")
    assert urlparse(page.url).path == "/me"
    assert handoff_notices_of(console, "rosa") == ["start", "day_before"]
    page.reload()
    expect(form.get_by_label("When a shift of mine starts")).to_be_checked()
    expect(form.get_by_label("When a shift of mine ends")).not_to_be_checked()
    expect(form.get_by_label("A day (24 hours) before a shift of mine starts")).to_be_checked()
    assert "rosa: hand-off notices: start, day_before" in console.paging.stack.cli(
        "handoff-notices", "rosa"
    )

    # A kind the API does not know (a forged form) is refused naming the field, and
    # nothing is written; without the session's CSRF token nothing is even tried.
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    forged = httpx.post(
        f"{console.url}/me/handoff-notices",
        data={"csrf": csrf or "", "notice": ["end", "lunch"]},
        cookies=cookies,
        follow_redirects=False,
    )
    assert forged.status_code == 400
    assert "notices[1]" in forged.text and "lunch" in forged.text
    no_token = httpx.post(
        f"{console.url}/me/handoff-notices",
        data={"notice": "end"},
        cookies=cookies,
        follow_redirects=False,
    )
    assert no_token.status_code == 403
    assert handoff_notices_of(console, "rosa") == ["start", "day_before"]

    # Unticking every box turns them off.
    page.goto(f"{console.url}/me")
    form.get_by_label("When a shift of mine starts").uncheck()
    form.get_by_label("A day (24 hours) before a shift of mine starts").uncheck()
    form.get_by_role("button", name="Save hand-off notices").click()
    expect(page.get_by_role("status")).to_contain_text("Hand-off notices saved")
    assert handoff_notices_of(console, "rosa") == []
