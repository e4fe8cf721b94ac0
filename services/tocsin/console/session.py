"""Console sessions: a signed, HttpOnly, SameSite cookie, and a CSRF token for every form.

The cookie holds the user id, the user's personal token (from IdentityService.Login or an
OpenID Connect sign-in) and a random CSRF token, signed with itsdangerous under a key
derived from the service credential (every gateway replica shares it; the credential
itself signs nothing). A cookie that is not signed by us, or older than `MAX_AGE`, is no
session. Before signing in the cookie holds only a CSRF token, so the sign-in form is
protected too.

Guarantee: every POST the console accepts carries the CSRF token of the session cookie
sent with it (compared in constant time); the cookie is never readable by scripts
(HttpOnly), is sent on top-level navigation only from other sites (SameSite=Lax: GETs
change nothing), and is Secure when TOCSIN_PUBLIC_URL is https. The token inside grants
nothing by itself beyond what the user's token grants: every action is a gRPC call made
with it, so the services authorise it, and a revoked token ends the session at its next
request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "tocsin_console"
NOTICE_COOKIE = "tocsin_console_notice"
SECRET_COOKIE = "tocsin_console_secret"
SECRET_MAX_AGE_S = 60
CSRF_FIELD = "csrf"
MAX_AGE_S = 7 * 24 * 3600
"""A session cookie older than this is ignored (the token inside lasts 30 days)."""
_SALT = "tocsin console session"


@dataclass(frozen=True)
class Session:
    """What the cookie says. `token` is empty before signing in."""

    csrf: str
    user_id: str = ""
    token: str = ""

    @property
    def signed_in(self) -> bool:
        return bool(self.token)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


class SessionCodec:
    """Reads and writes the session cookie."""

    def __init__(self, service_token: str, *, secure: bool) -> None:
        key = hmac.new(service_token.encode(), _SALT.encode(), hashlib.sha256).hexdigest()
        self._serializer = URLSafeTimedSerializer(key, salt=_SALT)
        self.secure = secure
        secret_key = hmac.new(service_token.encode(), b"console secret flash", hashlib.sha256)
        self._fernet = Fernet(base64.urlsafe_b64encode(secret_key.digest()))

    def read(self, request: Request) -> Session | None:
        return self.loads(request.cookies.get(COOKIE))

    def loads(self, raw: str | None) -> Session | None:
        """The session in a cookie's value, or None when it is not one we signed."""
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw, max_age=MAX_AGE_S)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        return Session(csrf=data["c"], user_id=str(data.get("u", "")), token=str(data.get("t", "")))

    def write(self, response: Response, session: Session) -> None:
        value = self._serializer.dumps(
            {"c": session.csrf, "u": session.user_id, "t": session.token}
        )
        response.set_cookie(
            COOKIE,
            value,
            max_age=MAX_AGE_S,
            path="/",
            httponly=True,
            secure=self.secure,
            samesite="lax",
        )

    def clear(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, secure=self.secure, samesite="lax")

    def write_notice(self, response: Response, text: str) -> None:
        """A one-time message for the next page ("Acknowledged #12"), signed like the
        session so nobody can plant text on someone's page."""
        response.set_cookie(
            NOTICE_COOKIE,
            self._serializer.dumps({"n": text[:300]}),
            max_age=60,
            path="/",
            httponly=True,
            secure=self.secure,
            samesite="lax",
        )

    def read_notice(self, request: Request) -> str:
        raw = request.cookies.get(NOTICE_COOKIE)
        if not raw:
            return ""
        try:
            data = self._serializer.loads(raw, max_age=60)
        except BadSignature:
            return ""
        return str(data.get("n", "")) if isinstance(data, dict) else ""

    def clear_notice(self, response: Response) -> None:
        response.delete_cookie(NOTICE_COOKIE, path="/", httponly=True, secure=self.secure)

    def write_secret(self, response: Response, text: str, path: str) -> None:
        """A secret to show once on the page a POST redirects to (a new API key): in a
        cookie encrypted and authenticated (Fernet, a key derived like the session's),
        HttpOnly, sent only to `path`, for a minute; the page that shows it clears it, so
        a reload shows it no more (and re-posts nothing: POST-redirect-GET)."""
        response.set_cookie(
            SECRET_COOKIE,
            self._fernet.encrypt(text.encode()).decode(),
            max_age=SECRET_MAX_AGE_S,
            path=path,
            httponly=True,
            secure=self.secure,
            samesite="strict",
        )

    def read_secret(self, request: Request) -> str:
        raw = request.cookies.get(SECRET_COOKIE)
        if not raw:
            return ""
        try:
            return self._fernet.decrypt(raw.encode(), ttl=SECRET_MAX_AGE_S).decode()
        except (InvalidToken, UnicodeDecodeError):
            return ""

    def clear_secret(self, response: Response, path: str) -> None:
        response.delete_cookie(
            SECRET_COOKIE, path=path, httponly=True, secure=self.secure, samesite="strict"
        )


def csrf_ok(session: Session | None, given: object) -> bool:
    """Whether a form's CSRF field matches the session's token (constant time)."""
    if session is None or not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(session.csrf.encode(), given.encode())
