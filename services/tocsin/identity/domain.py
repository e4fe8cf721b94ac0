"""Identity rules without I/O: passwords, lock-out, lifetimes, what a key shows.

Guarantee: a password is only ever kept as an argon2id hash (argon2-cffi's defaults, a
memory-hard hash); after LOCKOUT_FAILURES wrong passwords in a row a user cannot sign in
for LOCKOUT (whatever they type), so guessing is slow; a wrong user and a wrong password
give the same answer.
"""

from __future__ import annotations

from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tocsin.runtime.errors import FieldViolation, InvalidArgument

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
LOCKOUT_FAILURES = 5
"""Wrong passwords in a row before a user is locked out."""
LOCKOUT = timedelta(minutes=15)
"""How long a lock-out lasts (counted from the last failure)."""
SESSION_LIFETIME = timedelta(days=30)
"""How long a personal token from `tocsin login` works."""

_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("not a password anyone has")


def check_password(password: str) -> None:
    """Refuses a password too short or too long (naming the field, never echoing it)."""
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument.one("password", f"must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidArgument.one("password", f"must be at most {MAX_PASSWORD} characters")
    if password != password.strip() and not password.strip():
        raise InvalidArgument([FieldViolation("password", "must not be only whitespace")])


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True if `password` matches `stored`; with no stored hash, a dummy is checked so a
    missing user takes as long as a wrong password."""
    try:
        return _HASHER.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def locked_out(failures: int) -> bool:
    return failures >= LOCKOUT_FAILURES
