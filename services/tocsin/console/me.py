"""Console page: Me (`/me`), the signed-in person's own settings.

    GET  /me                                  upcoming shifts (two weeks), contact methods,
                                              notification rules, hand-off notices, API keys
    POST /me/contact-methods                  add a contact method
    POST /me/contact-methods/{id}             edit one (address, disabled)
    POST /me/contact-methods/{id}/delete      remove one
    POST /me/rules                            replace the notification rules
    POST /me/handoff-notices                  replace the shift hand-off notices
    POST /me/test-page                        send me a test page
    POST /me/api-keys                         create an API key (shown once, on the /me
                                              it redirects to)
    POST /me/api-keys/{id}/revoke             revoke one

Every change is the notification or identity service's own RPC, called as the viewer
(authorised as OWN: a person may change only their own), so validation is the API's: a
refused form shows the page again with the service's message, which names the field, and
nothing is written. A write that succeeds redirects to GET /me (POST-redirect-GET), so
reloading the page repeats nothing; a new API key's secret goes along in a one-time
encrypted cookie (session.py, write_secret), which /me clears as it shows it.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable
from datetime import timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tocsin.client.contact_types import CONTACT_TYPE_NAMES, CONTACT_TYPES
from tocsin.console.web import Viewer, console_of, page, render, see_other
from tocsin.v1 import (
    common_pb2,
    identity_pb2,
    notification_pb2,
    scheduling_pb2,
)

SHIFT_WINDOW = timedelta(days=14)
URGENCIES = {"high": common_pb2.URGENCY_HIGH, "low": common_pb2.URGENCY_LOW}
SECRET_PATH = "/me"
"""The only path the new API key's one-time cookie is sent to."""
RULE_ROWS_FREE = 2
"""Empty rows the rules form offers for new rules."""
HANDOFF_NOTICES = {
    "start": "When a shift of mine starts",
    "end": "When a shift of mine ends",
    "day_before": "A day (24 hours) before a shift of mine starts",
}
"""The kinds SetHandoffNotices takes (it checks them), as the form offers them."""


def _type_name(value: int) -> str:
    return CONTACT_TYPE_NAMES.get(value, str(value))


async def _page(
    request: Request,
    viewer: Viewer,
    *,
    error: str = "",
    status: int = 200,
    form: dict[str, str] | None = None,
) -> Response:
    console = console_of(request)
    new_key = console.sessions.read_secret(request) if status == 200 else ""
    now = console.clock.now_ms()
    start, end = Timestamp(), Timestamp()
    start.FromMilliseconds(now)
    end.FromMilliseconds(now + int(SHIFT_WINDOW.total_seconds() * 1000))
    client = viewer.client
    shifts = await client.scheduling.ListUserShifts(
        scheduling_pb2.ListUserShiftsRequest(user_id=viewer.user_id, start=start, end=end),
        timeout=10,
    )
    settings = await client.notification.GetUserNotificationSettings(
        notification_pb2.GetUserNotificationSettingsRequest(user_id=viewer.user_id), timeout=10
    )
    keys = await client.identity.ListApiKeys(
        identity_pb2.ListApiKeysRequest(user_id=viewer.user_id), timeout=10
    )
    user = await client.scheduling.GetUser(
        scheduling_pb2.GetUserRequest(id=viewer.user_id), timeout=10
    )
    chosen = set(user.user.handoff_notices)
    handoff = [
        {"kind": kind, "label": label, "on": kind in chosen}
        for kind, label in HANDOFF_NOTICES.items()
    ]
    methods = [
        {
            "id": m.id,
            "type": _type_name(m.type),
            "address": m.address,
            "disabled": m.disabled,
        }
        for m in settings.contact_methods
    ]
    rules = [
        {
            "contact": r.contact_method_id,
            "delay": r.delay.seconds // 60,
            "urgency": "low" if r.urgency == common_pb2.URGENCY_LOW else "high",
        }
        for r in settings.rules
    ]
    rules += [{"contact": "", "delay": "", "urgency": "high"}] * RULE_ROWS_FREE
    response = render(
        request,
        "me.html",
        {
            "shifts": shifts.shifts,
            "methods": methods,
            "rules": rules,
            "keys": keys.api_keys,
            "handoff": handoff,
            "types": list(CONTACT_TYPES),
            "urgencies": list(URGENCIES),
            "error": error,
            "new_key": new_key,
            "form": form or {},
        },
        status,
        active="me",
    )
    if new_key:
        console.sessions.clear_secret(response, SECRET_PATH)  # shown once
    return response


def _refusal(error: grpc.aio.AioRpcError) -> str | None:
    """The service's message for a refused form (None: not a refusal of the input)."""
    if error.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        return error.details() or "refused"
    return None


async def _submit(
    request: Request,
    viewer: Viewer,
    call: Awaitable[object],
    done: str,
    form: dict[str, str] | None = None,
) -> Response:
    """Make the write a form asked for: on success back to /me saying `done`; a refusal of
    the input shows the page again with the service's message (400) and the form as sent;
    any other failure raises (the console's error page)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        message = _refusal(error)
        if message is None:
            raise
        return await _page(request, viewer, error=message, status=400, form=form)
    return see_other(request, "/me", done)


@page
async def me_page(request: Request, viewer: Viewer) -> Response:
    return await _page(request, viewer)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


@page
async def add_contact_method(request: Request, viewer: Viewer) -> Response:
    form = await request.form()
    kind = _text(form, "type")
    address = _text(form, "address")
    method = notification_pb2.ContactMethod(
        id=_text(form, "id") or f"{viewer.user_id}-{kind or 'contact'}-{secrets.token_hex(2)}",
        user_id=viewer.user_id,
        type=CONTACT_TYPES.get(kind, notification_pb2.CONTACT_METHOD_TYPE_UNSPECIFIED),
        address=address,
    )
    return await _submit(
        request,
        viewer,
        viewer.client.notification.CreateContactMethod(
            notification_pb2.CreateContactMethodRequest(contact_method=method), timeout=10
        ),
        f"Contact method {method.id} added",
        form={"type": kind, "address": address, "id": _text(form, "id")},
    )


async def _method(viewer: Viewer, method_id: str) -> notification_pb2.ContactMethod | None:
    settings = await viewer.client.notification.GetUserNotificationSettings(
        notification_pb2.GetUserNotificationSettingsRequest(user_id=viewer.user_id), timeout=10
    )
    return next((m for m in settings.contact_methods if m.id == method_id), None)


@page
async def edit_contact_method(request: Request, viewer: Viewer) -> Response:
    method_id = request.path_params["method_id"]
    form = await request.form()
    method = await _method(viewer, method_id)
    if method is None:
        return await _page(request, viewer, error=f"no contact method {method_id}", status=404)
    method.address = _text(form, "address")
    method.disabled = form.get("disabled") == "on"
    return await _submit(
        request,
        viewer,
        viewer.client.notification.UpdateContactMethod(
            notification_pb2.UpdateContactMethodRequest(contact_method=method), timeout=10
        ),
        f"Contact method {method_id} saved",
    )


@page
async def delete_contact_method(request: Request, viewer: Viewer) -> Response:
    method_id = request.path_params["method_id"]
    return await _submit(
        request,
        viewer,
        viewer.client.notification.DeleteContactMethod(
            notification_pb2.DeleteContactMethodRequest(id=method_id), timeout=10
        ),
        f"Contact method {method_id} removed",
    )


def _rules(form: FormData) -> list[notification_pb2.NotificationRule] | str:
    """The rules of the form, in row order (rows without a contact method are left out),
    or what is wrong, naming the row's field."""
    rules = []
    row = 0
    while f"rule-{row}-contact" in form:
        contact = _text(form, f"rule-{row}-contact")
        delay = _text(form, f"rule-{row}-delay") or "0"
        urgency = _text(form, f"rule-{row}-urgency") or "high"
        row += 1
        if not contact:
            continue
        if not delay.isdigit():
            return f"rules[{row - 1}].delay: expected whole minutes, e.g. 5 (got {delay!r})"
        if urgency not in URGENCIES:
            return f"rules[{row - 1}].urgency: expected high or low (got {urgency!r})"
        rule = notification_pb2.NotificationRule(
            contact_method_id=contact, urgency=URGENCIES[urgency]
        )
        rule.delay.FromSeconds(int(delay) * 60)
        rules.append(rule)
    return rules


@page
async def set_rules(request: Request, viewer: Viewer) -> Response:
    rules = _rules(await request.form())
    if isinstance(rules, str):
        return await _page(request, viewer, error=rules, status=400)
    return await _submit(
        request,
        viewer,
        viewer.client.notification.SetNotificationRules(
            notification_pb2.SetNotificationRulesRequest(user_id=viewer.user_id, rules=rules),
            timeout=10,
        ),
        "Notification rules saved",
    )


@page
async def set_handoff_notices(request: Request, viewer: Viewer) -> Response:
    """The kinds ticked, in the order sent; SetHandoffNotices checks them (a kind it does
    not know is refused naming `notices[i]`, and nothing is written)."""
    form = await request.form()
    kinds = [k.strip() for k in form.getlist("notice") if isinstance(k, str)]
    return await _submit(
        request,
        viewer,
        viewer.client.scheduling.SetHandoffNotices(
            scheduling_pb2.SetHandoffNoticesRequest(user_id=viewer.user_id, notices=kinds),
            timeout=10,
        ),
        "Hand-off notices saved",
    )


@page
async def test_page(request: Request, viewer: Viewer) -> Response:
    reply = await viewer.client.notification.SendTestPage(
        notification_pb2.SendTestPageRequest(user_id=viewer.user_id), timeout=30
    )
    sent = ", ".join(sorted({_type_name(a.type) for a in reply.attempts})) or "nothing"
    return see_other(
        request, "/me", f"Test page sent to {len(reply.attempts)} contact methods ({sent})"
    )


@page
async def create_api_key(request: Request, viewer: Viewer) -> Response:
    form = await request.form()
    try:
        created = await viewer.client.identity.CreateApiKey(
            identity_pb2.CreateApiKeyRequest(user_id=viewer.user_id, name=_text(form, "name")),
            timeout=10,
        )
    except grpc.aio.AioRpcError as error:
        message = _refusal(error)
        if message is None:
            raise
        return await _page(request, viewer, error=message, status=400)
    # Shown once, on the page this redirects to: it is stored hashed, never shown again.
    response = see_other(request, "/me#api-keys", f"API key {created.api_key.id} created")
    console_of(request).sessions.write_secret(response, created.key, SECRET_PATH)
    return response


@page
async def revoke_api_key(request: Request, viewer: Viewer) -> Response:
    key_id = request.path_params["key_id"]
    await viewer.client.identity.RevokeApiKey(
        identity_pb2.RevokeApiKeyRequest(id=key_id), timeout=10
    )
    return see_other(request, "/me", f"API key {key_id} revoked")


routes: list[BaseRoute] = [
    Route("/me", me_page, methods=["GET"]),
    Route("/me/contact-methods", add_contact_method, methods=["POST"]),
    Route("/me/contact-methods/{method_id}", edit_contact_method, methods=["POST"]),
    Route("/me/contact-methods/{method_id}/delete", delete_contact_method, methods=["POST"]),
    Route("/me/rules", set_rules, methods=["POST"]),
    Route("/me/handoff-notices", set_handoff_notices, methods=["POST"]),
    Route("/me/test-page", test_page, methods=["POST"]),
    Route("/me/api-keys", create_api_key, methods=["POST"]),
    Route("/me/api-keys/{key_id}/revoke", revoke_api_key, methods=["POST"]),
]
