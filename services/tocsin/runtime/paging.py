"""Page sizes of List calls: 0 means the default, more than the maximum is capped."""

from __future__ import annotations

from tocsin.runtime.errors import InvalidArgument


def page_size(requested: int, default: int = 100, maximum: int = 1000) -> int:
    if requested < 0:
        raise InvalidArgument.one("page_size", "must not be negative")
    return min(requested or default, maximum)
