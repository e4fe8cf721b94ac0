"""A real SMTP server for tests (aiosmtpd on loopback, in its own thread): records every
message it accepts, checks a user name and password when given, and can answer the next
messages with an SMTP error."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

USER = "tocsin"
PASSWORD = "s3cret/pass"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    login: str | None
    tls: bool

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        return str(body.get_content())


@dataclass
class SmtpRecorder:
    received: list[Received] = field(default_factory=list)
    refuse: list[str] = field(default_factory=list)
    """Answers to the next DATA commands instead of 250 (e.g. "451 4.3.0 try later")."""
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse:
            return self.refuse.pop(0)
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        login = session.authenticated and session.auth_data
        self.received.append(
            Received(
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                message,
                login.login.decode() if isinstance(login, LoginPassword) else None,
                session.ssl is not None,
            )
        )
        return "250 2.0.0 OK"


class _Authenticator:
    def __init__(self, recorder: SmtpRecorder) -> None:
        self.recorder = recorder

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        if isinstance(data, LoginPassword):
            self.recorder.logins.append(data.login.decode())
        return AuthResult(success=ok, auth_data=data if ok else None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def smtp_server(
    *, auth: bool = True, tls: tuple[Path, Path] | None = None
) -> Iterator[tuple[SmtpRecorder, int]]:
    """A running SMTP server on 127.0.0.1; yields its recorder and port.

    With `tls` (certificate and key files), STARTTLS is offered and required before
    anything else; with `auth`, AUTH (PLAIN/LOGIN) is required before MAIL, and only
    over TLS when `tls` is given."""
    recorder = SmtpRecorder()
    kwargs: dict[str, Any] = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls)
        kwargs |= {"tls_context": context, "require_starttls": True}
    if auth:
        kwargs |= {
            "authenticator": _Authenticator(recorder),
            "auth_required": True,
            "auth_require_tls": tls is not None,
        }
    controller = Controller(recorder, hostname="127.0.0.1", port=_free_port(), **kwargs)
    controller.start()
    try:
        yield recorder, controller.port
    finally:
        controller.stop()
