"""Identifiers chosen by operators (users, schedules, policies, services, contact methods)."""

from __future__ import annotations

import re

from tocsin.runtime.errors import FieldViolation

_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ID_RULE = "must be 1-63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"


def id_violations(value: str, field: str) -> list[FieldViolation]:
    """[] when `value` is a valid identifier, else one violation naming `field`."""
    return [] if _ID.fullmatch(value) else [FieldViolation(field, f"{ID_RULE}, got {value!r}")]
