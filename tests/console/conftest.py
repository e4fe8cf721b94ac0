"""The web console's browser tests: a real stack and a real browser.

`console` (one per test module): `tocsin up` as real processes with Twilio as `tocsin
fake-twilio` (tests/e2e/paging_stack.py) on a clock `SPEED` times faster than the wall,
configured with examples/oncall.yaml and tests/console/console.yaml (plus the files a
module lists in `STACK_CONFIGS`; `STACK_START` and `STACK_SPEED` override the virtual
start and the speed), every user of console.yaml given a password (`PASSWORDS`).

`browser` (one per test module): the Debian `chromium` (/usr/bin/chromium, or
TOCSIN_TEST_CHROMIUM) driven by Playwright. Where it is missing the browser tests are
skipped saying why, except under CI (`CI` set), where they fail.

`page`: a fresh browser context (no cookies) and page per test; `phone`: the same with a
390 x 844 viewport. `console.sign_in(page, "rosa")` signs in through the form.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.paging_stack import EXAMPLE_CONFIG, PagingStack, paging_stack
from tocsin.v1 import identity_pb2

HERE = Path(__file__).parent
CONFIG = HERE / "console.yaml"
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SPEED = 10.0
"""A virtual minute is 6 real seconds: slow enough for a browser to act between pages."""
PASSWORDS = {
    "adam": "adam's console password",
    "rosa": "rosa's console password",
    "olga": "olga's console password",
    "quinn": "quinn's console password",
}
PHONE = {"width": 390, "height": 844}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    wanted = os.environ.get("TOCSIN_TEST_CHROMIUM", "/usr/bin/chromium")
    return wanted if os.access(wanted, os.X_OK) else shutil.which("chromium")


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser tests: .ci/run installs chromium)")
    pytest.skip(reason)


@dataclass
class ConsoleStack:
    paging: PagingStack

    @property
    def url(self) -> str:
        return self.paging.stack.http

    def sign_in(self, page: Any, user: str, password: str | None = None) -> None:
        """Sign in through the form, as a person would (signed out first); ends on the
        incidents page."""
        page.context.clear_cookies()
        page.goto(f"{self.url}/signin")
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password").fill(password or PASSWORDS[user])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{self.url}/")


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ConsoleStack]:
    module = request.module
    configs = (EXAMPLE_CONFIG, CONFIG, *getattr(module, "STACK_CONFIGS", ()))
    with paging_stack(
        tmp_path_factory.mktemp("console"),
        start=getattr(module, "STACK_START", START),
        speed=getattr(module, "STACK_SPEED", SPEED),
        configs=configs,
    ) as paging:
        # No TOCSIN_API_TOKEN: the test's own client is the local admin (a laptop).
        for user, password in PASSWORDS.items():
            paging.client.identity.SetPassword(
                identity_pb2.SetPasswordRequest(user_id=user, password=password), timeout=10
            )
        yield ConsoleStack(paging)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        _missing("no chromium (apt install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("no playwright (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    yield context.new_page()
    context.close()
