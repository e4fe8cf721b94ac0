"""OpenID Connect sign-in end to end: a real provider (oidc-provider, run by node) on
loopback, the gateway over real HTTP with authlib, the users of a real scheduling service;
a browser (an httpx client with cookies) that fills in the provider's own forms."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.oidc.provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    Provider,
    browse_sign_in,
    free_port,
    oidc_provider,
)
from tests.services import running
from tocsin.client.client import TocsinClient
from tocsin.client.endpoints import DEFAULTS, Endpoints
from tocsin.gateway.server import start_gateway
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
    assert "tocsin_token" not in page.headers.get("set-cookie", "")


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
    her a personal token (with the service credential), which then acts as alice."""
    async with httpx.AsyncClient() as browser:
        page = await browse_sign_in(
            browser, f"{stack.gateway}/auth/oidc/login", "alice@example.com", stack.callback
        )
        assert page.status_code < 400, page.text
        token = browser.cookies.get("tocsin_token")
    assert token and token.startswith("tcn_") and token not in page.text
    async with TocsinClient(
        Endpoints(**(DEFAULTS | {"scheduling": stack.scheduling})), token=token
    ) as alice:
        who = await alice.identity.WhoAmI(identity_pb2.WhoAmIRequest(), timeout=10)
    assert (who.user_id, who.credential) == ("alice", "session")
