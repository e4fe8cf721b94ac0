"""Email pages over SMTP (aiosmtplib), or printed by the console notifier without
TOCSIN_SMTP_URL.

One `send` is one SMTP session: connect (TLS from the start for `smtps://`, else
STARTTLS as configured), log in if credentials are set, then one message. Its failures
are classified like Twilio's, so "at most once per attempt" holds:

- nothing was handed over yet (no connection, TLS or login failed with a 4xx, a 4xx
  answer to MAIL/RCPT/DATA): retryable; the server has not taken the message;
- refused for good (5xx to MAIL/RCPT/DATA, login refused with 5xx, a bad address):
  permanent; the user's next rule runs at once;
- the connection broke or timed out after DATA began: outcome unknown; the message may
  have been accepted, so it is not resent.

The message carries a Message-ID made from the attempt id, so a mail system that sees the
same attempt twice (it cannot come twice from tocsin) can tell. Addresses appear in logs
and errors only masked (`a***@example.com`), the password never.
"""

from __future__ import annotations

import html
import re
import ssl
import sys
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from typing import TextIO

import aiosmtplib

from tocsin.notification import messages
from tocsin.notification.channels import Message, PageContent
from tocsin.notification.providers import ProviderError, SendResult
from tocsin.runtime.config import SmtpConfig
from tocsin.runtime.errors import InvalidArgument
from tocsin.v1 import notification_pb2

SUBJECT_SUMMARY_CHARS = 120
MAX_ADDRESS_CHARS = 254
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def mask_email(address: str) -> str:
    """`alice@example.com` -> `a***@example.com`."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def normalize_email(address: str, field: str) -> str:
    """`address` as one plain address (`alice@example.com`, domain lower-cased), or
    InvalidArgument naming `field` (the address itself is not repeated)."""
    text = address.strip()
    if len(text) > MAX_ADDRESS_CHARS or any(c.isspace() or ord(c) < 32 for c in text):
        raise InvalidArgument.one(field, "must be an email address like name@company.org")
    local, at, domain = text.rpartition("@")
    domain = domain.lower()
    try:
        parsed = Address(addr_spec=f"{local}@{domain}") if at and local else None
    except (ValueError, IndexError, HeaderParseError):
        parsed = None
    if parsed is None or parsed.username != local or not _DOMAIN.fullmatch(domain):
        raise InvalidArgument.one(field, "must be an email address like name@company.org")
    return f"{local}@{domain}"


def _subject(page: PageContent) -> str:
    summary = messages.clean_text(page.summary) or "(no summary)"
    if len(summary) > SUBJECT_SUMMARY_CHARS:
        summary = summary[: SUBJECT_SUMMARY_CHARS - 3].rstrip() + "..."
    service = messages.clean_text(page.service) or "unknown service"
    return f"[tocsin] {page.label} {service}: {summary}"


def render_page(page: PageContent, sms_number: str | None = None) -> Message:
    """The page as a subject, a plain-text body and an HTML body (the same content)."""
    summary = messages.clean_text(page.summary) or "(no summary)"
    service = messages.clean_text(page.service) or "unknown service"
    details = page.details.strip()
    acts = [
        f"tocsin ack {page.number or page.incident_id}",
        f"tocsin resolve {page.number or page.incident_id}",
    ]
    reply = (
        f"or text '{page.reply_code}a' (acknowledge) / '{page.reply_code}r' (resolve) "
        f"to {sms_number}"
        if sms_number and page.reply_code
        else ""
    )
    text_lines = [
        f"Incident {page.label} on {service} is triggered:",
        "",
        f"    {summary}",
        "",
        *([f"Details:\n{details}", ""] if details else []),
        f"Act on it: {acts[0]}  /  {acts[1]}",
        *([reply[0].upper() + reply[1:]] if reply else []),
        f"Open it: {page.link}" if page.link else f"tocsin: {page.public_url}",
        "",
        f"(page {page.attempt_id})",
    ]
    e = html.escape
    url = page.link or page.public_url  # the incident's page in the console, when signed
    label = "Open it" if page.link else "tocsin"
    details_html = f"<h3>Details</h3><pre>{e(details)}</pre>" if details else ""
    reply_html = f"<p>{e(reply[0].upper() + reply[1:])}</p>" if reply else ""
    body_html = (
        "<!DOCTYPE html><html><body>"
        f"<h2>Incident {e(page.label)} on {e(service)} is triggered</h2>"
        f"<p><strong>{e(summary)}</strong></p>"
        f"{details_html}"
        f"<p>Act on it: <code>{e(acts[0])}</code> or <code>{e(acts[1])}</code></p>"
        f"{reply_html}"
        f'<p>{label}: <a href="{e(url, quote=True)}">{e(url)}</a></p>'
        f'<p style="color:#888">page {e(page.attempt_id)}</p>'
        "</body></html>"
    )
    return Message("\n".join(text_lines) + "\n", subject=_subject(page), html=body_html)


def render_test(user_name: str) -> Message:
    name = messages.clean_text(user_name) or "you"
    text = f"This is a tocsin test page for {name}. Email pages reach you here; no action needed."
    return Message(
        text + "\n",
        subject=f"[tocsin] test page for {name}",
        html=f"<!DOCTYPE html><html><body><p>{html.escape(text)}</p></body></html>",
    )


def build_email(sender: str, to: str, message: Message, attempt_id: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = message.subject
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    domain = sender.rpartition("@")[2].rstrip(">") or "tocsin"
    mail["Message-ID"] = f"<{attempt_id}@{domain}>"
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(message.body)
    if message.html:
        mail.add_alternative(message.html, subtype="html")
    return mail


def classify_smtp_error(exc: BaseException, *, handed_over: bool) -> ProviderError:
    """An SMTP failure -> ProviderError. `handed_over`: DATA had begun (the server may
    have the message), so a broken connection is an unknown outcome, not a retry."""
    name = type(exc).__name__
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [e.code for e in exc.recipients]
        temporary = bool(codes) and all(400 <= c < 500 for c in codes)
        return ProviderError(
            f"SMTP refused the recipient ({', '.join(map(str, codes))})",
            permanent=not temporary,
            retryable=temporary,
            code=codes[0] if codes else None,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code > 0:
        temporary = 400 <= exc.code < 500
        # A 4xx/5xx answer is the server saying it did not take the message.
        return ProviderError(
            f"SMTP {exc.code}: {messages.clean_text(exc.message)[:200]}",
            permanent=not temporary,
            retryable=temporary,
            code=exc.code,
        )
    if isinstance(exc, ssl.SSLError):
        # The server's certificate is not trusted (or TLS is broken): retrying cannot
        # help, and the user's next rule should not wait for it.
        return ProviderError(f"SMTP TLS failed: {name}", permanent=True, retryable=False)
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPConnectTimeoutError):
        return ProviderError(f"could not connect to SMTP: {name}", permanent=False, retryable=True)
    if not handed_over:
        return ProviderError(
            f"SMTP failed before the message was sent: {name}", permanent=False, retryable=True
        )
    return ProviderError(
        f"no answer from SMTP, the message may have been accepted: {name}",
        permanent=False,
        retryable=False,
    )


class EmailChannel:
    """Email pages through one SMTP server (a new session per message)."""

    type: int = notification_pb2.CONTACT_METHOD_TYPE_EMAIL
    span_name = "smtp.send"
    replies = False
    rate_limited = False
    wants_details = True

    def __init__(self, config: SmtpConfig, *, sms_number: str | None = None) -> None:
        self.config = config
        self.sms_number = sms_number
        self.tls = ssl.create_default_context(cafile=config.ca_file)
        """Verifies the server (TLS or STARTTLS) against TOCSIN_SMTP_CA or the system."""

    def normalize_address(self, address: str, field: str) -> str:
        return normalize_email(address, field)

    def render(self, page: PageContent) -> Message:
        return render_page(page, self.sms_number)

    def render_test(self, user_name: str) -> Message:
        return render_test(user_name)

    async def send(self, address: str, message: Message, attempt_id: str) -> SendResult:
        config = self.config
        mail = build_email(config.sender, address, message, attempt_id)
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            use_tls=config.implicit_tls,
            start_tls=False,
            tls_context=self.tls,
            timeout=config.timeout_s,
        )
        handed_over = False
        try:
            await client.connect()
            await client.ehlo()
            if not config.implicit_tls and config.starttls != "off":
                if client.supports_extension("starttls"):
                    await client.starttls(tls_context=self.tls)
                elif config.starttls == "require":
                    raise ProviderError(
                        "the SMTP server does not offer STARTTLS (starttls=require)",
                        permanent=True,
                        retryable=False,
                    )
            if config.username is not None and config.password is not None:
                await client.login(config.username, config.password)
            handed_over = True
            await client.send_message(mail)
        except ProviderError:
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise classify_smtp_error(exc, handed_over=handed_over) from None
        finally:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()
        return SendResult(sid=str(mail["Message-ID"]), status="sent")

    async def aclose(self) -> None:
        return None


class ConsoleEmailChannel(EmailChannel):
    """Without TOCSIN_SMTP_URL: one printed line per email page (address masked)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self.sms_number = None

    async def send(self, address: str, message: Message, attempt_id: str) -> SendResult:
        self._stream.write(f"tocsin page: email to {mask_email(address)}: {message.subject}\n")
        self._stream.flush()
        return SendResult(sid=None, status="sent")
