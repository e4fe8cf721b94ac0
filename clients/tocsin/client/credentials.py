"""Which credential a client sends, and where `tocsin login` keeps a personal token.

Order: an explicit token; `TOCSIN_TOKEN` (a personal token or an API key); the token
`tocsin login` stored for this stack; `TOCSIN_API_TOKEN` (the bootstrap admin); else none,
which a laptop stack (no TOCSIN_API_TOKEN, loopback only) takes as the local admin.

The login file is `$XDG_CONFIG_HOME/tocsin/tokens.json` (default `~/.config/tocsin/`),
created with mode 0600 in a 0700 directory and refused if others can read it; it holds one
token per stack, keyed by the scheduling service's address.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

TOKEN_VARIABLE = "TOCSIN_TOKEN"
API_TOKEN_VARIABLE = "TOCSIN_API_TOKEN"


class CredentialsFileError(ValueError):
    """The login file cannot be used (readable by others, not JSON)."""


def tokens_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "tocsin" / "tokens.json"


def _read(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    if path.stat().st_mode & 0o077:
        raise CredentialsFileError(
            f"{path} is readable by other users; run chmod 600 {path} (or tocsin logout)"
        )
    try:
        loaded = json.loads(path.read_text())
    except ValueError:
        raise CredentialsFileError(f"{path} is not JSON; delete it and log in again") from None
    if not isinstance(loaded, dict):
        raise CredentialsFileError(f"{path} is not a tokens file; delete it and log in again")
    return {str(k): v for k, v in loaded.items() if isinstance(v, dict)}


def stored_login(stack: str, env: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """What `tocsin login` stored for the stack whose scheduling service is `stack`."""
    return _read(tokens_path(env)).get(stack)


def store_login(stack: str, token: str, user_id: str, env: Mapping[str, str] | None = None) -> Path:
    """Keep `token` for `stack` (replacing an older one); returns the file."""
    path = tokens_path(env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tokens = _read(path)
    tokens[stack] = {"token": token, "user": user_id}
    _write_private(path, json.dumps(tokens, indent=2) + "\n")
    return path


def forget_login(stack: str, env: Mapping[str, str] | None = None) -> bool:
    path = tokens_path(env)
    tokens = _read(path)
    if tokens.pop(stack, None) is None:
        return False
    _write_private(path, json.dumps(tokens, indent=2) + "\n")
    return True


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    tmp.replace(path)


def default_token(stack: str, env: Mapping[str, str] | None = None) -> str | None:
    """The credential a client of `stack` sends when given none (see the module doc)."""
    env = os.environ if env is None else env
    if env.get(TOKEN_VARIABLE):
        return env[TOKEN_VARIABLE]
    login = stored_login(stack, env)
    if login and login.get("token"):
        return login["token"]
    return env.get(API_TOKEN_VARIABLE) or None
