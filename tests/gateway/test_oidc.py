"""OpenID Connect sign-in end to end: a real provider (oidc-provider, run by node) on
loopback, the gateway over real HTTP with authlib, the users of a real scheduling service;
a browser (an httpx client with cookies) that fills in the provider's own forms."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.cli_runner import run_cli
from tests.oidc.provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    Provider,
    browse_sign_in,
    form_of,
    free_port,
    oidc_provider,
)
from tests.services import running
from tocsin.cli import identity_commands
from tocsin.cli.main import main
from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import DEFAULTS, Endpoints
from tocsin.console.session import COOKIE as SESSION_COOKIE
from tocsin.console.session import SessionCodec
from tocsin.gateway.server import start_gateway
from tocsin.runtime.auth import process_service_token
from tocsin.runtime.clock import ManualClock
from tocsin.runtime.config import load_config
from tocsin.runtime.redis import RedisClient
from tocsin.runtime.service import peer_client
from tocsin.scheduling.server import create_server
from tocsin.v1 import identity_pb2
from tocsin.v1 import scheduling_pb2 as pb


@dataclass
class SignInStack:
    gateway: str
    callback: str
    provider: Provider
    scheduling: str


@pytest.fixture
async def stack(redis: RedisClient) -> AsyncIterator[SignInStack]:
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    callback = f"{gateway}/auth/oidc/callback"
    with oidc_provider(callback) as provider:
        async with running(create_server, redis, ManualClock(0)) as (_, scheduling):
            config = load_config(
                {
                    "TOCSIN_SCHEDULING_ADDR": scheduling,
                    "TOCSIN_HTTP_ADDR": f"127.0.0.1:{port}",
                    "TOCSIN_PUBLIC_URL": gateway,
                    "TOCSIN_OIDC_ISSUER": provider.issuer,
                    "TOCSIN_OIDC_CLIENT_ID": CLIENT_ID,
                    "TOCSIN_OIDC_CLIENT_SECRET": CLIENT_SECRET,
                }
            )
            users = peer_client(config)
            for user in (
                pb.User(id="alice", name="Alice", email="Alice@Example.com"),
                pb.User(id="bob", name="Bob"),
            ):
                await users.scheduling.CreateUser(pb.CreateUserRequest(user=user), timeout=10)
            await users.close()
            server, task, _ = await start_gateway(config, ManualClock(0))
            try:
                yield SignInStack(gateway, callback, provider, scheduling)
            finally:
                server.should_exit = True
                await task


async def test_login_redirects_to_the_provider_with_pkce_state_and_nonce(
    stack: SignInStack,
) -> None:
    async with httpx.AsyncClient() as browser:
        response = await browser.get(f"{stack.gateway}/auth/oidc/login")
    assert response.status_code == 302
    location = httpx.URL(response.headers["location"])
    assert str(location).startswith(stack.provider.issuer)
    params = location.params
    assert params["client_id"] == CLIENT_ID and params["response_type"] == "code"
    assert params["redirect_uri"] == stack.callback
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) >= 43
    assert params["state"] and params["nonce"]
    assert "openid" in params["scope"].split()
    cookie = response.headers["set-cookie"]
    assert "path=/auth/oidc" in cookie.lower() and "httponly" in cookie.lower()
    assert CLIENT_SECRET not in cookie


async def test_a_person_without_a_tocsin_user_is_refused(stack: SignInStack) -> None:
    async with httpx.AsyncClient() as browser:
        page = await browse_sign_in(
            browser, f"{stack.gateway}/auth/oidc/login", "mallory@example.com", stack.callback
        )
    assert page.status_code == 403
    assert "no tocsin user has the email or id" in page.text
    assert "mallory@example.com" in page.text
    assert SESSION_COOKIE not in page.headers.get("set-cookie", "")


async def test_a_callback_without_the_flow_cookie_is_refused(stack: SignInStack) -> None:
    """A code and state delivered to another browser (login CSRF) sign nobody in."""
    async with httpx.AsyncClient() as victim, httpx.AsyncClient() as attacker:
        start = await attacker.get(f"{stack.gateway}/auth/oidc/login")
        assert start.status_code == 302
        response = await browse_sign_in(
            attacker, f"{stack.gateway}/auth/oidc/login", "alice", stack.callback
        )
        page = await victim.get(str(response.url))
    assert page.status_code == 400
    assert "did not complete" in page.text


async def test_the_cli_listener_must_be_loopback(stack: SignInStack) -> None:
    async with httpx.AsyncClient() as browser:
        for cli in (
            "https://evil.example.com/steal",
            "http://10.0.0.1:8000/cb",
            "http://127.0.0.1/cb",  # no port: not a listener the CLI opened
        ):
            response = await browser.get(
                f"{stack.gateway}/auth/oidc/login",
                params={"cli": cli, "cli_state": "s" * 32},
            )
            assert response.status_code == 400, cli
            assert "loopback" in response.text


async def test_the_client_secret_is_in_no_log_line(
    stack: SignInStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient() as browser:
        await browse_sign_in(
            browser, f"{stack.gateway}/auth/oidc/login", "nobody@example.com", stack.callback
        )
    assert "OIDC sign-in refused" in caplog.text
    assert CLIENT_SECRET not in caplog.text


async def test_an_email_the_provider_has_not_verified_is_refused(
    stack: SignInStack, redis: RedisClient
) -> None:
    async with httpx.AsyncClient() as browser:
        page = await browse_sign_in(
            browser,
            f"{stack.gateway}/auth/oidc/login",
            "unverified-alice@example.com",
            stack.callback,
        )
    assert page.status_code == 403
    assert "not verified" in page.text


async def test_a_sign_in_maps_to_the_right_user_and_yields_a_token_that_works(
    stack: SignInStack,
) -> None:
    """The ID token's email (any case) names alice; the gateway has IdentityService issue
    her a personal token (with the service credential), which then acts as alice: the
    browser lands in the web console signed in as her."""
    async with httpx.AsyncClient() as browser:
        page = await browse_sign_in(
            browser, f"{stack.gateway}/auth/oidc/login", "alice@example.com", stack.callback
        )
        assert page.status_code == 303 and page.headers["location"] == "/", page.text
        session = SessionCodec(process_service_token(), secure=False).loads(
            browser.cookies.get(SESSION_COOKIE)
        )
        console = await browser.get(f"{stack.gateway}/signin")  # signed in: on to /
        assert console.status_code == 303 and console.headers["location"] == "/"
    assert session is not None and session.user_id == "alice"
    token = session.token
    assert token and token.startswith("tcn_") and token not in page.text
    async with TocsinClient(
        Endpoints(**(DEFAULTS | {"scheduling": stack.scheduling})), token=token
    ) as alice:
        who = await alice.identity.WhoAmI(identity_pb2.WhoAmIRequest(), timeout=10)
    assert (who.user_id, who.credential) == ("alice", "session")


class _Lines(io.StringIO):
    """stderr of a CLI run in a thread: hands each written line to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str]) -> None:
        super().__init__()
        self._loop, self._queue = loop, queue

    def write(self, text: str) -> int:
        for line in text.splitlines():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
        return super().write(text)


async def test_tocsin_login_sso_keeps_a_token_whoami_takes_as_alice(
    stack: SignInStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CLI's loopback listener gets the token in the gateway page's POST, stores it
    like a password login, and the next command acts as alice."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("TOCSIN_PUBLIC_URL", stack.gateway)
    monkeypatch.setenv("TOCSIN_SCHEDULING_ADDR", stack.scheduling)
    monkeypatch.setenv("TOCSIN_DATA_DIR", str(tmp_path / "data"))
    for variable in ("TOCSIN_API_TOKEN", "TOCSIN_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    lines: asyncio.Queue[str] = asyncio.Queue()
    err = _Lines(asyncio.get_running_loop(), lines)
    out = io.StringIO()

    def login() -> object:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["login", "--sso", "--no-browser"])
            except SystemExit as exit_:
                return exit_.code
        return None

    # A failing test must not leave the CLI waiting (and stdout redirected) for 5 minutes.
    monkeypatch.setattr(identity_commands, "SSO_WAIT_S", 20.0)
    running_login = asyncio.create_task(asyncio.to_thread(login))
    line = await asyncio.wait_for(lines.get(), 30)
    assert line.startswith("Sign in at: ")
    url = line.removeprefix("Sign in at: ")
    assert url.startswith(f"{stack.gateway}/auth/oidc/login?cli=http")
    async with httpx.AsyncClient() as browser:
        page = await browse_sign_in(browser, url, "alice@example.com", stack.callback)
        assert page.status_code == 200
        action, fields = form_of(page.text)  # the page's auto-submitted form
        assert urlsplit(action).hostname == "127.0.0.1" and SESSION_COOKIE not in browser.cookies
        posted = await browser.post(action, data=fields)
    assert posted.status_code == 200 and "alice" in posted.text
    assert await asyncio.wait_for(running_login, 30) == 0
    assert "Signed in as alice" in out.getvalue()
    token = fields["token"]
    assert token not in out.getvalue() + err.getvalue()
    stored = json.loads((tmp_path / "tocsin" / "tokens.json").read_text())
    assert stored[stack.scheduling]["token"] == token
    code, whoami, _ = await run_cli(monkeypatch, {"scheduling": stack.scheduling}, "whoami")
    assert code == 0 and whoami.startswith("alice (responder, session)")
