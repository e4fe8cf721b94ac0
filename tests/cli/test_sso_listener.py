"""The loopback listener of `tocsin login --sso`: it takes exactly one POST with its own
state, on its own path, and nothing else (real HTTP on loopback)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tocsin.cli.sso import BrowserSignIn, SsoError


def _listener(sign_in: BrowserSignIn) -> tuple[str, str]:
    query = parse_qs(urlsplit(sign_in.url).query)
    return query["cli"][0], query["cli_state"][0]


async def test_the_url_names_the_gateway_a_loopback_listener_and_a_random_state() -> None:
    first, second = BrowserSignIn("https://tocsin.example.com/"), BrowserSignIn("http://gw")
    try:
        assert first.url.startswith("https://tocsin.example.com/auth/oidc/login?cli=")
        callback, state = _listener(first)
        assert urlsplit(callback).hostname == "127.0.0.1" and urlsplit(callback).port
        assert len(state) >= 32 and state != _listener(second)[1]
    finally:
        first.close()
        second.close()


async def test_only_its_own_state_on_its_own_path_signs_in() -> None:
    sign_in = BrowserSignIn("http://gw")
    callback, state = _listener(sign_in)
    base = callback.removesuffix("/callback")
    async with httpx.AsyncClient() as browser:
        assert (await browser.get(callback)).status_code == 405
        wrong_path = await browser.post(f"{base}/other", data={"state": state, "token": "t"})
        assert wrong_path.status_code == 400
        forged = await browser.post(callback, data={"state": "x" * 43, "token": "stolen"})
        assert forged.status_code == 400
        no_token = await browser.post(callback, data={"state": state, "user": "alice"})
        assert no_token.status_code == 400
        good = await browser.post(
            callback, data={"state": state, "token": "tok-123", "user": "alice"}
        )
        assert good.status_code == 200 and "alice" in good.text and "tok-123" not in good.text
        again = await browser.post(callback, data={"state": state, "token": "other"})
        assert again.status_code == 400
    result = await asyncio.to_thread(sign_in.wait, 5)
    assert (result.token, result.user_id) == ("tok-123", "alice")


async def test_no_sign_in_in_time_is_an_error() -> None:
    sign_in = BrowserSignIn("http://gw")
    with pytest.raises(SsoError, match="tocsin login --sso"):
        await asyncio.to_thread(sign_in.wait, 0.2)
