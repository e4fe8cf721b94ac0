"""Transport security settings shared by every tocsin gRPC server and client.

- `TOCSIN_TLS_CERT` + `TOCSIN_TLS_KEY`: this process's certificate chain and private key
  (PEM files). Servers serve it; clients present it when the server asks (mutual TLS).
- `TOCSIN_TLS_CA`: the CA (PEM bundle) that verifies the other side. Servers then require
  and verify a client certificate signed by it (mutual TLS); clients verify servers
  against it (without it, against the system's roots).
- `TOCSIN_ALLOW_INSECURE_TOKENS=1`: the operator's explicit consent to send a bearer
  token over a plaintext channel to a non-loopback address (a trusted private network).

The guarantee: `tls_from_env` either returns settings whose files were readable and
whose certificate matches its key, or raises `TlsError` naming the variable; and
`check_token_transport` refuses (before any channel exists) a bearer token over a
plaintext channel to anything but loopback unless the operator said so. The private key
is held in memory only, never in a `repr`, log line or error message.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tocsin.client.targets import TargetError, addresses, is_loopback_host

CERT_VARIABLE = "TOCSIN_TLS_CERT"
KEY_VARIABLE = "TOCSIN_TLS_KEY"
CA_VARIABLE = "TOCSIN_TLS_CA"
ALLOW_INSECURE_VARIABLE = "TOCSIN_ALLOW_INSECURE_TOKENS"


class TlsError(ValueError):
    """A TLS setting is unusable; the message names the variable (never a key's bytes)."""


class InsecureTokenError(ValueError):
    """A bearer token would travel in plaintext beyond loopback."""


@dataclass(frozen=True)
class TlsSettings:
    """PEM bytes read once at start (a rotated file takes a restart)."""

    cert_chain: bytes | None = field(repr=False)
    """This process's certificate chain (None: a client that presents none)."""
    private_key: bytes | None = field(repr=False)
    """The key of `cert_chain`: a secret, never logged."""
    ca: bytes | None = field(repr=False)
    """Verifies the peer; on a server it also turns on mutual TLS."""
    cert_path: Path | None = None
    key_path: Path | None = None
    ca_path: Path | None = None

    @property
    def mutual(self) -> bool:
        """Servers require client certificates signed by the CA."""
        return self.ca is not None


def _read(value: str, variable: str) -> tuple[Path, bytes]:
    path = Path(value).expanduser()
    try:
        data = path.read_bytes()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise TlsError(f"{variable}={value!r}: cannot read the file ({reason})") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{variable}={value!r}: not a PEM file (no -----BEGIN line)")
    return path, data


def tls_from_env(env: Mapping[str, str]) -> TlsSettings | None:
    """The TLS settings of the environment, or None when no TOCSIN_TLS_* is set."""
    cert_value = env.get(CERT_VARIABLE, "").strip()
    key_value = env.get(KEY_VARIABLE, "").strip()
    ca_value = env.get(CA_VARIABLE, "").strip()
    if not (cert_value or key_value or ca_value):
        return None
    if bool(cert_value) != bool(key_value):
        given, missing = (
            (CERT_VARIABLE, KEY_VARIABLE) if cert_value else (KEY_VARIABLE, CERT_VARIABLE)
        )
        raise TlsError(f"{missing} must be set together with {given}")
    cert_path = key_path = ca_path = None
    cert = key = ca = None
    if cert_value:
        cert_path, cert = _read(cert_value, CERT_VARIABLE)
        key_path, key = _read(key_value, KEY_VARIABLE)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as error:
            reason = (
                "the certificate does not match the key"
                if "KEY_VALUES_MISMATCH" in str(error)
                else "not a usable certificate and private key"
            )
            raise TlsError(f"{CERT_VARIABLE}/{KEY_VARIABLE}: {reason}") from None
    if ca_value:
        ca_path, ca = _read(ca_value, CA_VARIABLE)
        try:
            ssl.create_default_context(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise TlsError(f"{CA_VARIABLE}={ca_value!r}: not a PEM CA certificate") from None
    return TlsSettings(cert, key, ca, cert_path, key_path, ca_path)


def allow_insecure_tokens(env: Mapping[str, str]) -> bool:
    """TOCSIN_ALLOW_INSECURE_TOKENS: `1` or unset/`0`; anything else is refused."""
    value = env.get(ALLOW_INSECURE_VARIABLE, "").strip()
    if value not in ("", "0", "1"):
        raise TlsError(f"{ALLOW_INSECURE_VARIABLE}={value!r}: expected 1 (allow) or 0")
    return value == "1"


def check_token_transport(target: str, *, tls: bool, allow_insecure: bool) -> None:
    """Refuse sending a bearer token in plaintext to a non-loopback `target`."""
    if tls or allow_insecure:
        return
    try:
        hosts = [host for host, _port in addresses(target)]
    except TargetError:
        return  # the channel itself reports a malformed target
    outside = [host for host in hosts if not is_loopback_host(host)]
    if outside:
        raise InsecureTokenError(
            f"refusing to send a bearer token without TLS to {outside[0]} (not loopback): "
            f"set {CERT_VARIABLE}/{KEY_VARIABLE}/{CA_VARIABLE}, or "
            f"{ALLOW_INSECURE_VARIABLE}=1 on a network you trust"
        )
