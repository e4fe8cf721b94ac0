"""Circuit breakers of the phone providers: a half-open provider's trial is spent only by
a page that tries it, so a recovered second provider is tried again while the first one
carries the pages."""

from __future__ import annotations

from typing import Any

from tocsin.notification.providers import CircuitBreaker, Route, route_order


def routes(now: list[int]) -> tuple[Route, Route]:
    def breaker() -> CircuitBreaker:
        return CircuitBreaker(failures=2, open_for_ms=1_000, now_ms=lambda: now[0])

    provider: Any = object()
    return Route("twilio", provider, breaker()), Route("signalwire", provider, breaker())


def trip(route: Route) -> CircuitBreaker:
    """Fail `route` twice in a row: its breaker opens (for 1,000 ms from now)."""
    assert route.breaker is not None
    route.breaker.failed()
    route.breaker.failed()
    return route.breaker


def test_an_open_provider_goes_last_and_its_trial_comes_after_the_open_time() -> None:
    now = [0]
    first, second = routes(now)
    breaker = trip(first)  # open until 1,000
    assert [r.name for r in route_order([first, second])] == ["signalwire", "twilio"]
    now[0] = 1_000
    # half-open: this page tries it first, and the next page does not (one trial at a time)
    assert [r.name for r in route_order([first, second])] == ["twilio", "signalwire"]
    assert [r.name for r in route_order([first, second])] == ["signalwire", "twilio"]
    breaker.succeeded()
    assert [r.name for r in route_order([first, second])] == ["twilio", "signalwire"]


def test_a_half_open_second_provider_keeps_its_trial_while_the_first_carries_pages() -> None:
    now = [0]
    first, second = routes(now)
    breaker = trip(second)  # open until 1,000
    now[0] = 1_000
    for _ in range(3):  # pages go to the healthy first provider
        assert [r.name for r in route_order([first, second])] == ["twilio", "signalwire"]
    assert breaker.ready()  # its trial was not spent by pages that never tried it
    # the first provider goes down: the next page tries the second at once
    trip(first)
    assert [r.name for r in route_order([first, second])] == ["signalwire", "twilio"]
    assert not breaker.ready()  # that page took the trial
