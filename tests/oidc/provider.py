"""A real OpenID provider on loopback for the tests, and a browser that signs in with it.

The provider is the `oidc-provider` npm package run by node (tests/oidc/provider.mjs),
installed by `.ci/run` into `.ci/oidc` (`npm install --prefix .ci/oidc oidc-provider@9.13.3`).
Without node or the package the tests that need it skip with that command, except in CI
(`CI` set), where they fail. The "browser" is an httpx client with a cookie jar that
follows redirects and submits the provider's own login and consent forms, as a person
would; nothing of the provider or of authlib is mocked.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_SCRIPT = Path(__file__).with_name("provider.mjs")
PACKAGE = "oidc-provider@9.13.3"
MODULE = ROOT / ".ci" / "oidc" / "node_modules" / "oidc-provider" / "lib" / "index.js"
CLIENT_ID = "tocsin-gateway"
CLIENT_SECRET = "oidc-client-secret-7f3a9c"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_provider() -> tuple[str, Path]:
    """node and the oidc-provider package, or skip (fail in CI) saying how to get them."""
    node = shutil.which("node")
    if node is None or not MODULE.is_file():
        message = (
            "needs node and the oidc-provider npm package: "
            f"npm install --no-save --prefix .ci/oidc {PACKAGE} (.ci/run does this)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return node, MODULE


@dataclass(frozen=True)
class Provider:
    issuer: str
    process: subprocess.Popen[str]


@contextmanager
def oidc_provider(redirect_uri: str) -> Iterator[Provider]:
    node, module = require_provider()
    port = free_port()
    env = {
        **os.environ,
        "OIDC_PROVIDER_MODULE": str(module),
        "PORT": str(port),
        "CLIENT_ID": CLIENT_ID,
        "CLIENT_SECRET": CLIENT_SECRET,
        "REDIRECT_URI": redirect_uri,
    }
    process = subprocess.Popen(
        [node, str(PROVIDER_SCRIPT)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until it listens (or dies: "")
        if not line.startswith("ready "):
            raise AssertionError(f"the OpenID provider did not start: {line!r}")
        yield Provider(line.split()[1], process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_FORM = re.compile(r"<form[^>]*action=\"([^\"]+)\"[^>]*>(.*?)</form>", re.S | re.I)
_INPUT = re.compile(r"<input([^>]*)>", re.I)
_ATTR = re.compile(r"(\w+)=\"([^\"]*)\"")


def form_of(page: str) -> tuple[str, dict[str, str]]:
    match = _FORM.search(page)
    if match is None:
        raise AssertionError(f"no form on the provider's page: {page[:500]}")
    fields = {}
    for attrs in _INPUT.findall(match.group(2)):
        values = dict(_ATTR.findall(attrs))
        if "name" in values:
            fields[values["name"]] = html.unescape(values.get("value", ""))
    return html.unescape(match.group(1)), fields


async def browse_sign_in(
    browser: httpx.AsyncClient, start: str, login: str, stop_at: str, *, steps: int = 20
) -> httpx.Response:
    """Open `start`, follow redirects, fill the provider's login form with `login` and
    accept its consent form, until a response comes from a URL starting with `stop_at`
    (the gateway's callback); returns that response."""
    url, method, data = start, "GET", None
    started = time.monotonic()
    for _ in range(steps):
        response = await browser.request(method, url, data=data)
        if str(response.url).startswith(stop_at):
            return response
        if response.is_redirect:
            url, method, data = (
                urljoin(str(response.url), response.headers["location"]),
                "GET",
                None,
            )
            continue
        assert response.status_code == 200, (response.status_code, response.text[:500])
        action, fields = form_of(response.text)
        if "login" in fields or fields.get("prompt") == "login":
            fields.update(login=login, password="any")
        url, method, data = urljoin(str(response.url), action), "POST", fields
    raise AssertionError(f"sign-in did not reach {stop_at} ({time.monotonic() - started:.1f}s)")
