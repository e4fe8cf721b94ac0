"""`tocsin login --sso`: single sign-on through the gateway, from a terminal.

The CLI listens on a random loopback port, prints (and opens, if it can) the gateway's
`/auth/oidc/login?cli=http://127.0.0.1:PORT/callback&cli_state=S`, and waits. After the
person signs in at the provider, the gateway's page POSTs the personal token, the user id
and `S` back to that listener; anything else (another path, a wrong or missing state, a
second post) is refused. The token only travels in that POST body to loopback: never in a
URL, the terminal or a log line.
"""

from __future__ import annotations

import secrets
import threading
import webbrowser
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode

CALLBACK_PATH = "/callback"
MAX_BODY = 16 * 1024


class SsoError(Exception):
    """The browser sign-in did not complete (timed out, refused)."""


@dataclass(frozen=True)
class SsoResult:
    token: str = ""
    user_id: str = ""


class _Listener(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.result: SsoResult | None = None
        self.done = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    server: _Listener

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request line is harmless, but a terminal is no place for a log

    def do_GET(self) -> None:
        self._answer(405, "Sign in through the link tocsin printed.")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.path != CALLBACK_PATH or not 0 < length <= MAX_BODY or self.server.done.is_set():
            self._answer(400, "Not a tocsin sign-in.")
            return
        fields = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        state = fields.get("state", [""])[0]
        token = fields.get("token", [""])[0]
        user = fields.get("user", [""])[0]
        if not secrets.compare_digest(state.encode(), self.server.state.encode()) or not token:
            self._answer(400, "This sign-in was not started by this tocsin command.")
            return
        self.server.result = SsoResult(token, user)
        self.server.done.set()
        self._answer(200, f"Signed in to tocsin as {user}. Return to the terminal.")

    def _answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def login_url(gateway: str, port: int, state: str) -> str:
    query = urlencode({"cli": f"http://127.0.0.1:{port}{CALLBACK_PATH}", "cli_state": state})
    return f"{gateway.rstrip('/')}/auth/oidc/login?{query}"


class BrowserSignIn:
    """One sign-in: `url` to visit, then `wait()` for the token."""

    def __init__(self, gateway: str) -> None:
        self._listener = _Listener(secrets.token_urlsafe(32))
        port = self._listener.server_address[1]
        self.url = login_url(gateway, int(port), self._listener.state)
        self._thread = threading.Thread(target=self._listener.serve_forever, daemon=True)
        self._thread.start()

    def open_browser(self) -> bool:
        try:
            return webbrowser.open(self.url)
        except webbrowser.Error:
            return False

    def wait(self, timeout: float) -> SsoResult:
        try:
            if not self._listener.done.wait(timeout):
                raise SsoError(f"no sign-in within {int(timeout)} s; run tocsin login --sso again")
            assert self._listener.result is not None
            return self._listener.result
        finally:
            self.close()

    def close(self) -> None:
        self._listener.shutdown()
        self._listener.server_close()
