"""Calendar feed URLs. With an API token set, each feed carries its own token: an HMAC of
its path under the API token, so one shared calendar link reveals nothing else."""

from __future__ import annotations

import hashlib
import hmac


def feed_token(api_token: str, path: str) -> str:
    return hmac.new(api_token.encode(), f"ical:{path}".encode(), hashlib.sha256).hexdigest()[:32]


def feed_url(public_url: str, path: str, api_token: str | None) -> str:
    url = public_url.rstrip("/") + path
    return f"{url}?token={feed_token(api_token, path)}" if api_token else url
