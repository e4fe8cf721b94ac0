"""What every console page shares: the signed-in viewer, rendering, forms, errors.

A page module (console/incidents.py, oncall.py, ...) exposes `routes`; its handlers are
wrapped by `page` (GET, and POST with the CSRF check), which finds the viewer or sends
the browser to the sign-in page, and maps a gRPC refusal to a page saying why:

    @page
    async def my_page(request: Request, viewer: Viewer) -> Response:
        reply = await viewer.client.scheduling.ListSchedules(...)   # as the viewer
        return render(request, "my_page.html", {"schedules": reply.schedules})

    @page
    async def my_action(request: Request, viewer: Viewer) -> Response:   # methods=["POST"]
        form = await request.form()            # the CSRF field is already checked
        await viewer.client.incidents.AddNote(...)
        return see_other(request, "/somewhere", "Note added")

Guarantee: a page runs only for a viewer whose token the services accept right now
(IdentityService.WhoAmI on every request; a refused token ends the session and leads to
the sign-in page); a POST runs only with the session's CSRF token; every gRPC call a page
makes goes through `viewer.client`, which carries the viewer's own token, so the services
authorise every action (the console only hides buttons a role may not use).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tocsin.client.client import TocsinClient
from tocsin.console.session import CSRF_FIELD, Session, csrf_ok, new_csrf
from tocsin.v1 import common_pb2, identity_pb2

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

ROLE_NAMES = {
    common_pb2.ROLE_ADMIN: "admin",
    common_pb2.ROLE_RESPONDER: "responder",
    common_pb2.ROLE_OBSERVER: "observer",
    common_pb2.ROLE_UNSPECIFIED: "responder",
}
NAV = (
    ("incidents", "Incidents", "/"),
    ("oncall", "On call", "/oncall"),
    ("schedules", "Schedules", "/schedules"),
    ("me", "Me", "/me"),
    ("admin", "Admin", "/admin"),
)
"""The navigation on every page (Admin for admins only): key, label, URL."""


@dataclass
class Viewer:
    """The signed-in person of a request, as the services see them now."""

    user_id: str
    role: str
    """"admin", "responder" or "observer"."""
    display: str
    session: Session
    client: TocsinClient
    """Calls the services as this person (their token, channel "console")."""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_respond(self) -> bool:
        """Acknowledge, resolve, snooze, escalate, reassign, notes."""
        return self.role in ("admin", "responder")


@dataclass
class UserClients:
    """One TocsinClient per signed-in token (least recently used closed beyond `size`)."""

    make: Callable[[str], TocsinClient]
    size: int = 128
    _clients: dict[str, TocsinClient] = field(default_factory=dict)

    async def get(self, token: str) -> TocsinClient:
        client = self._clients.pop(token, None)
        if client is None:
            client = self.make(token)
        self._clients[token] = client
        while len(self._clients) > self.size:
            oldest = next(iter(self._clients))
            await self._clients.pop(oldest).close()
        return client

    async def drop(self, token: str) -> None:
        client = self._clients.pop(token, None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


def console_of(request: Request) -> Any:
    """The app's Console (console/app.py), kept in the app state."""
    return request.app.state.console


def timestamp_iso(ts: Timestamp | None) -> str:
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def when(value: Timestamp | datetime | None, style: str = "datetime") -> Markup:
    """A <time> element: UTC in the page, turned into the viewer's local time by
    console.js (style "datetime", "time" or "relative")."""
    if isinstance(value, datetime):
        dt = value.astimezone(UTC)
    elif value is None or (value.seconds == 0 and value.nanos == 0):
        return Markup("")
    else:
        dt = value.ToDatetime(UTC)
    iso = dt.isoformat(timespec="seconds").replace("+00:00", "Z")
    text = dt.strftime("%Y-%m-%d %H:%M UTC")
    return Markup('<time datetime="{}" data-local="{}">{}</time>').format(iso, style, text)


def incident_number(incident: Any) -> str:
    """The number people say for an incident: its `number` when the message has one,
    else its id."""
    number = getattr(incident, "number", 0)
    return str(number) if number else str(incident.id)


def enum_label(value: int, enum_type: Any, prefix: str) -> str:
    """SEVERITY_CRITICAL -> "critical"."""
    try:
        name: str = enum_type.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower().replace("_", " ")


def make_templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["number"] = incident_number
    env.filters["iso"] = timestamp_iso
    env.filters["tojson_pretty"] = lambda value: json.dumps(value, indent=2, sort_keys=True)
    env.globals["NAV"] = NAV
    return env


def csrf_input(request: Request) -> Markup:
    """The hidden CSRF field every form must carry."""
    session: Session | None = getattr(request.state, "session", None)
    token = session.csrf if session is not None else ""
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, token)


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    status: int = 200,
    *,
    active: str = "",
) -> HTMLResponse:
    """A page from templates/`template`, with `viewer`, `csrf_input()`, the one-time
    `notice` and `active` (the nav key to mark) in its context."""
    console = console_of(request)
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    notice = console.sessions.read_notice(request)
    body = console.templates.get_template(template).render(
        {
            "request": request,
            "viewer": viewer,
            "csrf_input": lambda: csrf_input(request),
            "notice": notice,
            "active": active,
            "oidc": console.oidc_enabled,
            **(context or {}),
        }
    )
    response = HTMLResponse(body, status, headers=NO_STORE)
    if notice:
        console.sessions.clear_notice(response)
    session: Session | None = getattr(request.state, "new_session", None)
    if session is not None:
        console.sessions.write(response, session)
    return response


NO_STORE = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
}


def local_path(value: str | None, default: str = "/") -> str:
    """`value` when it is a path on this site (no scheme, no //host), else `default`."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


def see_other(request: Request, url: str, notice: str = "") -> RedirectResponse:
    """303 to `url` (a path here) after a POST, with an optional one-time notice."""
    response = RedirectResponse(local_path(url), status_code=303)
    if notice:
        console_of(request).sessions.write_notice(response, notice)
    return response


def to_sign_in(request: Request, *, end_session: bool = False) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = "/"
    response = RedirectResponse(f"/signin?next={quote(target, safe='/')}", status_code=303)
    if end_session:
        console_of(request).sessions.clear(response)
    return response


async def find_viewer(request: Request) -> Viewer | None:
    """The signed-in viewer, or None (no session, or the services refuse its token)."""
    console = console_of(request)
    session: Session | None = console.sessions.read(request)
    request.state.session = session
    if session is None or not session.signed_in:
        return None
    client: TocsinClient = await console.clients.get(session.token)
    try:
        who = await client.identity.WhoAmI(identity_pb2.WhoAmIRequest(), timeout=10)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            await console.clients.drop(session.token)
            return None
        raise
    if not who.user_id:
        return None
    viewer = Viewer(
        user_id=who.user_id,
        role=ROLE_NAMES.get(who.role, "observer"),
        display=who.display or who.user_id,
        session=session,
        client=client,
    )
    request.state.viewer = viewer
    return viewer


PageHandler = Callable[[Request, Viewer], Awaitable[Response]]


def page(handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a page or action: sign-in required; on POST the CSRF field is checked; a gRPC
    refusal becomes a page naming it (UNAUTHENTICATED ends the session)."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            viewer = await find_viewer(request)
        except grpc.aio.AioRpcError as error:
            return error_page(request, error)
        if viewer is None:
            return to_sign_in(request, end_session=request.state.session is not None)
        if request.method == "POST":
            form = await request.form()
            if not csrf_ok(viewer.session, form.get(CSRF_FIELD)):
                return refused(
                    request,
                    "The form is missing its CSRF token or it is stale; "
                    "reload the page and try again.",
                    403,
                )
        try:
            return await handler(request, viewer)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                await console_of(request).clients.drop(viewer.session.token)
                return to_sign_in(request, end_session=True)
            return error_page(request, error)

    return endpoint


_STATUS = {
    grpc.StatusCode.PERMISSION_DENIED: (403, "Not allowed"),
    grpc.StatusCode.NOT_FOUND: (404, "Not found"),
    grpc.StatusCode.INVALID_ARGUMENT: (400, "Not accepted"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "Not possible now"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "Already exists"),
    grpc.StatusCode.ABORTED: (409, "Changed meanwhile; try again"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "Not accepted"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "Too many requests"),
}


def error_page(request: Request, error: grpc.aio.AioRpcError) -> HTMLResponse:
    """The page for a refused or failed call: the services' own message for refusals,
    a generic one for outages (their details stay in the logs)."""
    status, title = _STATUS.get(error.code(), (503, "Unavailable"))
    if status == 503:
        message = "A tocsin service did not answer; try again in a moment."
    else:
        message = error.details() or title
    return render(request, "error.html", {"title": title, "message": message}, status)


def refused(request: Request, message: str, status: int = 400) -> HTMLResponse:
    return render(request, "error.html", {"title": "Refused", "message": message}, status)


def ensure_csrf_session(request: Request) -> Session:
    """The request's session, or a new anonymous one (the sign-in form's CSRF token),
    written by `render`."""
    session: Session | None = getattr(request.state, "session", None)
    if session is None:
        session = console_of(request).sessions.read(request)
    if session is None:
        session = Session(csrf=new_csrf())
        request.state.new_session = session
    request.state.session = session
    return session


async def all_items(call: Any, request_type: Any, field: str) -> list[Any]:
    """Every item of a paged List RPC (`call` made with `request_type(page_size=...,
    page_token=...)`, the items in the reply's `field`)."""
    items: list[Any] = []
    token = ""
    while True:
        reply = await call(request_type(page_size=500, page_token=token), timeout=10)
        items.extend(getattr(reply, field))
        token = reply.next_page_token
        if not token:
            return items
