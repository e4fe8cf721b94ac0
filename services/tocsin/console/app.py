"""The web console: routes the gateway mounts at `/`, its sign-in and its shared state.

Pages live one module per area (console/incidents.py, oncall.py, schedules.py, me.py,
admin.py, reports.py), each exposing `routes` (add a new one to `PAGE_MODULES`) and
rendering templates/ of the same name through console/web.py. This module adds the
sign-in (`/signin`: a local password through IdentityService.Login; "Sign in with SSO"
through gateway/oidc.py when OpenID Connect is configured), the sign-out, the static
files, and the `Console` the pages reach through `request.app.state.console`.

Guarantee: the console reaches the services only through clients/ and calls them as the
signed-in person (see web.py); the only calls made with the gateway's service credential
are the live incident feed (console/feed.py, announcing which incident changed, never
its content) and, through gateway/oidc.py, issuing an SSO user's token.
"""

from __future__ import annotations

import logging

import grpc
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from tocsin.client.client import TocsinClient
from tocsin.console import admin, incidents, me, oncall, reports, schedules
from tocsin.console.feed import IncidentFeed
from tocsin.console.session import CSRF_FIELD, Session, SessionCodec, csrf_ok, new_csrf
from tocsin.console.web import (
    STATIC,
    UserClients,
    console_of,
    ensure_csrf_session,
    find_viewer,
    local_path,
    make_templates,
    render,
)
from tocsin.runtime.auth import service_token
from tocsin.runtime.clock import Clock
from tocsin.runtime.config import Config
from tocsin.v1 import identity_pb2

log = logging.getLogger(__name__)

PAGE_MODULES = (incidents, oncall, schedules, me, admin, reports)


class Console:
    """The console's shared state: templates, sessions, per-user clients, the feed."""

    def __init__(self, config: Config, service: TocsinClient, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.service = service
        self.oidc_enabled = config.oidc is not None
        self.sessions = SessionCodec(
            service_token(config), secure=config.public_url.startswith("https://")
        )
        self.templates = make_templates()
        endpoints = service.endpoints

        def user_client(token: str) -> TocsinClient:
            return TocsinClient(
                endpoints,
                token=token,
                via="console",
                tls=config.tls,
                allow_insecure_tokens=config.allow_insecure_tokens,
            )

        self.clients = UserClients(user_client)
        self.anonymous = user_client("")
        """For Login only (PUBLIC: it needs no credential)."""
        self.feed = IncidentFeed(service, clock)

    def signed_in(self, user_id: str, token: str) -> Response:
        """After a sign-in (password or SSO): a fresh session, and on to the incidents."""
        response = RedirectResponse("/", status_code=303)
        self.sessions.write(response, Session(csrf=new_csrf(), user_id=user_id, token=token))
        return response

    async def close(self) -> None:
        await self.feed.close()
        await self.clients.close()
        await self.anonymous.close()


async def sign_in_page(request: Request) -> Response:
    if await _signed_in(request):
        return RedirectResponse(local_path(request.query_params.get("next")), status_code=303)
    ensure_csrf_session(request)
    return render(request, "signin.html", {"next": request.query_params.get("next", "/")})


async def sign_in(request: Request) -> Response:
    console: Console = console_of(request)
    session = console.sessions.read(request)
    request.state.session = session
    form = await request.form()
    user_id = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    target = local_path(str(form.get("next", "/")))

    def again(message: str, status: int) -> Response:
        ensure_csrf_session(request)
        context = {"error": message, "username": user_id, "next": target}
        return render(request, "signin.html", context, status)

    if not csrf_ok(session, form.get(CSRF_FIELD)):
        return again("The sign-in form was stale; please try again.", 403)
    if not user_id or not password:
        return again("Enter your username and password.", 400)
    try:
        reply = await console.anonymous.identity.Login(
            identity_pb2.LoginRequest(user_id=user_id, password=password), timeout=10
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return again("Wrong username or password.", 401)
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return again(error.details() or "Too many wrong passwords; try later.", 429)
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return again(error.details() or "Not accepted.", 400)
        log.warning("console sign-in failed: %s", error.code().name)
        return again("tocsin cannot sign you in right now; try again in a moment.", 503)
    log.info("console sign-in of user %s", reply.user_id)
    response = console.signed_in(reply.user_id, reply.token)
    response.headers["location"] = target
    return response


async def sign_out(request: Request) -> Response:
    console: Console = console_of(request)
    session = console.sessions.read(request)
    form = await request.form()
    response = RedirectResponse("/signin", status_code=303)
    if session is None or not csrf_ok(session, form.get(CSRF_FIELD)):
        return response  # nothing to end, or a forged sign-out: change nothing
    if session.signed_in:
        client = await console.clients.get(session.token)
        try:
            await client.identity.Logout(identity_pb2.LogoutRequest(), timeout=10)
        except grpc.aio.AioRpcError as error:
            log.info("console sign-out: Logout failed (%s)", error.code().name)
        await console.clients.drop(session.token)
    console.sessions.clear(response)
    return response


async def _signed_in(request: Request) -> bool:
    try:
        return await find_viewer(request) is not None
    except grpc.aio.AioRpcError:
        return False


def routes() -> list[BaseRoute]:
    """Every console route (the gateway mounts them at `/`)."""
    found: list[BaseRoute] = [
        Route("/signin", sign_in_page, methods=["GET"]),
        Route("/signin", sign_in, methods=["POST"]),
        Route("/signout", sign_out, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    for module in PAGE_MODULES:
        found += module.routes
    return found
