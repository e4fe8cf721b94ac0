"""OpenID Connect sign-in at the gateway: the authorization code flow with PKCE, by authlib.

    GET /auth/oidc/login[?cli=http://127.0.0.1:PORT/PATH&cli_state=S]
        302 to the provider. The state, the nonce and the PKCE code verifier stay in a
        cookie signed with a key derived from the client secret, sent only to /auth/oidc
        and good for 10 minutes.
    GET /auth/oidc/callback?code=...&state=...
        authlib checks the state against the cookie, exchanges the code (client secret and
        code verifier) and verifies the ID token: signature against the provider's JWKS,
        issuer, audience, expiry and nonce. The claim TOCSIN_OIDC_CLAIM (default `email`;
        taken from the provider's userinfo when the ID token lacks it) names the tocsin
        user: the user whose email equals it (case-insensitively), else whose id does. An
        `email` the provider marks unverified is refused. A personal token is then issued
        for that user (IdentityService.IssueToken, with the service credential) and
        handed to the CLI's loopback listener in a POST (never in a URL), or to a browser
        as a web console session (an HttpOnly cookie, console/session.py).

Guarantee: nobody gets a token without an ID token that verifies, for a user that exists;
a refusal says why without echoing a secret; the token only ever goes to a loopback
listener the CLI opened or to the browser that signed in. The client secret and tokens
appear in no log line, span or error.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
from authlib.integrations.starlette_client import OAuth, OAuthError
from joserfc.errors import JoseError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from tocsin.client.client import TocsinClient
from tocsin.runtime.config import Address, Config, OidcConfig
from tocsin.v1 import identity_pb2, scheduling_pb2

log = logging.getLogger(__name__)

PREFIX = "/auth/oidc"
COOKIE = "tocsin_oidc"
TOKEN_COOKIE = "tocsin_token"
"""Where a browser sign-in's personal token goes (HttpOnly) when no console takes it."""
FLOW_SECONDS = 600
SCOPES = "openid email profile"
_CLI_STATE = re.compile(r"[A-Za-z0-9_-]{16,128}")


class SignInRefused(Exception):
    """A sign-in that must not yield a token; the message is for the person (no secrets)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


TokenIssuer = Callable[[TocsinClient, str], Awaitable[str]]
"""Issues a personal token for a user id (IdentityService.IssueToken)."""
BrowserLanding = Callable[[str, str], Response]
"""(user id, token) -> the response that signs a browser in (the web console's session)."""


@dataclass(frozen=True)
class SignedIn:
    user_id: str
    token: str


def session_key(oidc: OidcConfig) -> str:
    """The cookie signing key: derived from the client secret, so every gateway replica
    shares it and the secret itself never signs anything."""
    return hmac.new(
        oidc.client_secret.encode(), b"tocsin oidc sign-in state", hashlib.sha256
    ).hexdigest()


def loopback_callback(value: str) -> str:
    """The CLI's listener URL, refused unless plain http to a loopback address: a token
    must never be handed to a page the CLI did not open."""
    parts = urlsplit(value)
    host = parts.hostname or ""
    if (
        parts.scheme != "http"
        or not Address(host, 0).is_loopback
        or parts.port is None
        or parts.username
        or parts.password
        or parts.fragment
    ):
        raise SignInRefused("cli must be http://127.0.0.1:PORT/... (a loopback listener)", 400)
    return value


async def find_user(client: TocsinClient, value: str) -> str:
    """The id of the user whose email is `value` (case-insensitively), else whose id is."""
    wanted = value.strip().casefold()
    by_id = None
    token = ""
    while True:
        page = await client.scheduling.ListUsers(
            scheduling_pb2.ListUsersRequest(page_size=1000, page_token=token), timeout=10
        )
        for user in page.users:
            if user.email and user.email.casefold() == wanted:
                return user.id
            if user.id.casefold() == wanted:
                by_id = user.id
        token = page.next_page_token
        if not token:
            break
    if by_id is not None:
        return by_id
    raise SignInRefused(f"no tocsin user has the email or id {value!r}; ask an admin to add one")


class OidcSignIn:
    """The sign-in flow for one provider (routes, authlib client, claim mapping)."""

    def __init__(
        self,
        config: Config,
        client: TocsinClient,
        issue_token: TokenIssuer,
        on_browser_sign_in: BrowserLanding | None = None,
    ) -> None:
        assert config.oidc is not None
        self.client = client
        self.on_browser_sign_in = on_browser_sign_in
        self.oidc = config.oidc
        self.public_url = config.public_url
        self.issue_token = issue_token
        self.oauth = OAuth()
        self.provider: Any = self.oauth.register(
            "tocsin",
            client_id=self.oidc.client_id,
            client_secret=self.oidc.client_secret,
            server_metadata_url=f"{self.oidc.issuer}/.well-known/openid-configuration",
            client_kwargs={"scope": SCOPES, "code_challenge_method": "S256"},
        )

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}{PREFIX}/callback"

    def routes(self) -> list[BaseRoute]:
        inner = Starlette(
            routes=[Route("/login", self.login), Route("/callback", self.callback)],
            middleware=[
                Middleware(
                    SessionMiddleware,
                    secret_key=session_key(self.oidc),
                    session_cookie=COOKIE,
                    max_age=FLOW_SECONDS,
                    path=PREFIX,
                    same_site="lax",  # the provider's redirect back is a top-level GET
                    https_only=self.public_url.startswith("https://"),
                )
            ],
        )
        return [Mount(PREFIX, app=inner)]

    async def login(self, request: Request) -> Response:
        try:
            cli = request.query_params.get("cli")
            request.session.clear()
            if cli is not None:
                cli_state = request.query_params.get("cli_state", "")
                if not _CLI_STATE.fullmatch(cli_state):
                    raise SignInRefused("cli_state must be 16-128 letters, digits, - or _", 400)
                request.session["cli"] = loopback_callback(cli)
                request.session["cli_state"] = cli_state
            redirect: Response = await self.provider.authorize_redirect(request, self.redirect_uri)
            return redirect
        except SignInRefused as refused:
            return _page("Sign-in refused", str(refused), refused.status)
        except Exception as error:  # the provider is unreachable or its metadata broken
            log.warning("OIDC sign-in cannot start: %s", type(error).__name__)
            return _page(
                "Sign-in unavailable",
                "The identity provider cannot be reached; try again later.",
                502,
            )

    async def callback(self, request: Request) -> Response:
        cli = request.session.get("cli")
        cli_state = request.session.get("cli_state")
        try:
            signed_in = await self._sign_in(request)
        except SignInRefused as refused:
            log.info("OIDC sign-in refused: %s", refused)
            return _page("Sign-in refused", str(refused), refused.status)
        except Exception as error:  # the provider or scheduling unreachable, say
            log.warning("OIDC sign-in failed: %s", type(error).__name__)
            return _page("Sign-in failed", "tocsin could not complete the sign-in.", 502)
        finally:
            request.session.clear()
        log.info("OIDC sign-in of user %s", signed_in.user_id)
        if cli is not None:
            return _post_to_cli(cli, signed_in, str(cli_state))
        if self.on_browser_sign_in is not None:
            landing = self.on_browser_sign_in(signed_in.user_id, signed_in.token)
            landing.headers.update(_NO_STORE)
            return landing
        response = _page(
            "Signed in",
            f"You are signed in to tocsin as {signed_in.user_id}. You may close this page.",
            200,
        )
        response.set_cookie(
            TOKEN_COOKIE,
            signed_in.token,
            httponly=True,
            secure=self.public_url.startswith("https://"),
            samesite="strict",
            path="/",
        )
        return response

    async def _sign_in(self, request: Request) -> SignedIn:
        try:
            token = await self.provider.authorize_access_token(request)
        except OAuthError as error:
            # State mismatch or missing, or the provider answered with an error.
            raise SignInRefused(f"the sign-in did not complete ({error.error})", 400) from None
        except JoseError as error:
            raise SignInRefused(f"the ID token failed verification ({error.error})", 400) from None
        claims = dict(token.get("userinfo") or {})
        if not claims:
            raise SignInRefused("the provider returned no ID token", 400)
        claim = self.oidc.claim
        value = claims.get(claim)
        if value is None:
            userinfo = dict(await self.provider.userinfo(token=token))
            if userinfo.get("sub") != claims.get("sub"):
                raise SignInRefused("the provider's userinfo names another subject", 400)
            claims = {**userinfo, **claims}
            value = claims.get(claim)
        if not isinstance(value, str) or not value.strip():
            raise SignInRefused(f"the provider sent no {claim!r} claim for this account")
        if claim == "email" and claims.get("email_verified") is False:
            raise SignInRefused("the provider has not verified this email address")
        user_id = await find_user(self.client, value)
        try:
            personal = await self.issue_token(self.client, user_id)
        except grpc.aio.AioRpcError as error:
            log.warning("issuing a token for %s failed: %s", user_id, error.code().name)
            raise SignInRefused("tocsin could not issue a token; try again", 503) from None
        return SignedIn(user_id, personal)


def _page(title: str, message: str, status: int) -> HTMLResponse:
    body = (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>tocsin: {html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
    )
    return HTMLResponse(body, status, headers=_NO_STORE)


_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _post_to_cli(cli: str, signed_in: SignedIn, cli_state: str) -> HTMLResponse:
    """A page that POSTs the token to the CLI's loopback listener (a POST body, unlike a
    URL, stays out of browser history and server logs)."""
    fields = {"token": signed_in.token, "user": signed_in.user_id, "state": cli_state}
    inputs = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(value, quote=True)}">'
        for name, value in fields.items()
    )
    body = (
        '<!doctype html><html><head><meta charset="utf-8"><title>tocsin: signed in</title>'
        '</head><body onload="document.forms[0].submit()">'
        f'<form method="post" action="{html.escape(cli, quote=True)}">{inputs}'
        f"<p>Signed in as {html.escape(signed_in.user_id)}. "
        '<button type="submit">Return to the tocsin CLI</button></p></form></body></html>'
    )
    return HTMLResponse(body, 200, headers=_NO_STORE)


async def identity_token_issuer(client: TocsinClient, user_id: str) -> str:
    """A personal token for `user_id` from IdentityService.IssueToken (the gateway's client
    holds the service credential, the only one that RPC takes)."""
    reply = await client.identity.IssueToken(
        identity_pb2.IssueTokenRequest(user_id=user_id, method="oidc")
    )
    return reply.token


def routes_for(
    config: Config,
    client: TocsinClient,
    issue_token: TokenIssuer = identity_token_issuer,
    on_browser_sign_in: BrowserLanding | None = None,
) -> list[BaseRoute]:
    """The sign-in routes when TOCSIN_OIDC_* is set, else none (404). A browser's sign-in
    ends in `on_browser_sign_in` (the web console), else in a page and a token cookie."""
    if config.oidc is None:
        return []
    return OidcSignIn(config, client, issue_token, on_browser_sign_in).routes()
