"""Console sessions without a server: the signed cookie, its flags, CSRF and redirects."""

from __future__ import annotations

import base64

from starlette.requests import Request
from starlette.responses import Response

from tocsin.console.session import (
    COOKIE,
    SECRET_COOKIE,
    Session,
    SessionCodec,
    csrf_ok,
    new_csrf,
)
from tocsin.console.web import local_path


def cookie_value(response: Response) -> str:
    header = response.headers["set-cookie"]
    return header.split(";", 1)[0].split("=", 1)[1]


def test_a_session_round_trips_and_only_our_key_reads_it() -> None:
    codec = SessionCodec("service-credential", secure=False)
    session = Session(csrf=new_csrf(), user_id="alice", token="tcn_a_b")
    response = Response()
    codec.write(response, session)
    value = cookie_value(response)
    assert codec.loads(value) == session
    assert SessionCodec("another credential", secure=False).loads(value) is None
    # Tamper with the payload's first character: every bit of it counts (the signature's
    # last base64 character carries padding bits, so changing it may change nothing).
    assert codec.loads(("A" if value[0] != "A" else "B") + value[1:]) is None
    signature_start = value.rindex(".") + 1
    flipped = "A" if value[signature_start] != "A" else "B"
    assert codec.loads(value[:signature_start] + flipped + value[signature_start + 1 :]) is None
    assert codec.loads("") is None and codec.loads(None) is None


def test_the_cookie_is_httponly_samesite_and_secure_behind_https() -> None:
    plain, tls = Response(), Response()
    session = Session(csrf="c", user_id="u", token="t")
    SessionCodec("k", secure=False).write(plain, session)
    SessionCodec("k", secure=True).write(tls, session)
    for response in (plain, tls):
        header = response.headers["set-cookie"].lower()
        assert header.startswith(f"{COOKIE}=")
        assert "httponly" in header and "samesite=lax" in header and "path=/" in header
    assert "secure" not in plain.headers["set-cookie"].lower()
    assert "secure" in tls.headers["set-cookie"].lower()


def test_csrf_must_match_the_session() -> None:
    session = Session(csrf=new_csrf())
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, session.csrf + "x")
    assert not csrf_ok(session, "")
    assert not csrf_ok(session, None)
    assert not csrf_ok(None, session.csrf)
    assert new_csrf() != new_csrf()


def test_after_sign_in_only_paths_on_this_site() -> None:
    assert local_path("/incidents/12?status=any") == "/incidents/12?status=any"
    for outside in ("//evil.example/", "https://evil.example/", "/\\evil.example", "", None):
        assert local_path(outside) == "/"


def test_a_one_time_secret_is_encrypted_scoped_and_read_only_by_us() -> None:
    """A new API key travels to the page the form redirects to in a cookie nobody else
    can read or plant: encrypted, HttpOnly, sent to /me only, for a minute."""
    codec = SessionCodec("service-credential", secure=True)
    secret = "tcn_key_0123456789abcdef"
    response = Response()
    codec.write_secret(response, secret, "/me")
    header = response.headers["set-cookie"]
    assert header.startswith(f"{SECRET_COOKIE}=")
    lowered = header.lower()
    assert "httponly" in lowered and "secure" in lowered and "path=/me" in lowered
    assert "max-age=60" in lowered and "samesite=strict" in lowered
    value = cookie_value(response)
    assert secret not in value and secret not in base64.urlsafe_b64decode(value + "==").decode(
        "latin-1"
    )

    def read(codec: SessionCodec, value: str) -> str:
        scope = {"type": "http", "headers": [(b"cookie", f"{SECRET_COOKIE}={value}".encode())]}
        return codec.read_secret(Request(scope))

    assert read(codec, value) == secret
    assert read(SessionCodec("another credential", secure=True), value) == ""
    assert read(codec, value[:-2] + ("AA" if value[-2:] != "AA" else "BB")) == ""
    cleared = Response()
    codec.clear_secret(cleared, "/me")
    assert cleared.headers["set-cookie"].startswith(f'{SECRET_COOKIE}="";')
