"""Short signed links to an incident's page, for the pages tocsin sends (SMS, voice):
`<TOCSIN_PUBLIC_URL>/i/<number>?s=<signature>`.

The signature is an HMAC-SHA256 of the incident number under a key derived from the
service credential (TOCSIN_SERVICE_TOKEN), cut to 64 bits and written in 11 base64url
characters, so a link stays short in an SMS. It only makes links unguessable and lets the
gateway refuse made-up ones: it is not a credential. The gateway answers a good link with
a redirect to the console's incident page, which asks the reader to sign in like any
other page; a made-up or altered link is a 404.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

LINK_PREFIX = "/i/"
SIGNATURE_CHARS = 11
"""64 bits of the HMAC, base64url without padding."""


def _key(service_token: str) -> bytes:
    return hmac.new(service_token.encode(), b"tocsin incident link", hashlib.sha256).digest()


def link_signature(service_token: str, number: int) -> str:
    digest = hmac.new(_key(service_token), str(number).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:8]).decode()[:SIGNATURE_CHARS]


def incident_link(public_url: str, service_token: str, number: int) -> str:
    """The link to incident `number`'s page."""
    signature = link_signature(service_token, number)
    return f"{public_url.rstrip('/')}{LINK_PREFIX}{number}?s={signature}"


def valid_signature(service_token: str, number: int, signature: str) -> bool:
    return hmac.compare_digest(link_signature(service_token, number), signature)
