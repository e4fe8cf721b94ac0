"""The ingest path's noise control: event rules, then alert grouping (see rules.py for the
semantics, rule_store.py for the cache).

`Router.route` runs on every alert after normalisation and before dedup. Its guarantee is
rules.py's: whatever a rule does wrong (times out, raises, routes to a service that does
not exist), the alert goes on unchanged by that rule, and the failure is written to the
alert's timeline entry (`event_rule_failures`), logged, and counted
(`tocsin.event_rules.failures`). What rules did is written there too (`event_rules`), and
a suppressed alert is recorded by RuleStore.record_suppressed with the rule's name.

With no rule set stored the cost is one dictionary look-up per alert.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from opentelemetry import metrics

from tocsin.incidents import rules
from tocsin.incidents.rule_store import RuleCache, RuleStore
from tocsin.incidents.service_store import ServiceStore
from tocsin.incidents.store import IncidentStore
from tocsin.v1 import common_pb2, incidents_pb2

log = logging.getLogger(__name__)

_meter = metrics.get_meter("tocsin.incidents")
_failures = _meter.create_counter(
    "tocsin.event_rules.failures",
    description="Event rules that could not be evaluated on an alert (treated as not matching)",
)
_suppressed = _meter.create_counter(
    "tocsin.event_rules.suppressed", description="Alerts suppressed by an event rule"
)


@dataclass
class Routed:
    """Where an alert goes after the event rules."""

    service: incidents_pb2.Service
    dedup_key: str
    suppressed_by: str = ""
    urgency: tuple[common_pb2.Urgency.ValueType, str] | None = None
    """(urgency, the rule that set it) for the incident the alert opens, if a rule did."""
    notes: dict[str, str] = field(default_factory=dict)
    """Timeline attributes: what the rules did and what failed."""


class Router:
    def __init__(
        self,
        store: RuleStore,
        services: ServiceStore,
        incidents: IncidentStore,
        check_interval_s: float = 1.0,
    ) -> None:
        self.store = store
        self.cache = RuleCache(store, check_interval_s)
        self.services = services
        self.incidents = incidents

    async def route(
        self, service: incidents_pb2.Service, alert: incidents_pb2.Alert, dedup_key: str
    ) -> Routed:
        """Run the event rules on `alert` (changed in place); suppressed alerts are
        recorded here."""
        sets = await self.cache.sets()
        if not sets:
            return Routed(service, dedup_key)
        try:
            outcome = rules.evaluate(sets.get, service.id, alert, dedup_key)
        except Exception as error:  # never drop an alert for a rule's sake
            outcome = rules.Outcome(service.id, dedup_key, failures=[f"rules: {error!r}"])
        routed = Routed(service, outcome.dedup_key)
        if outcome.urgency:
            routed.urgency = (outcome.urgency, outcome.urgency_rule)
        if outcome.service_id != service.id:
            target = await self.services.lookup(service_id=outcome.service_id)
            if target is None:
                outcome.failures.append(
                    f"route to service {outcome.service_id!r}: it does not exist; "
                    f"kept on {service.id}"
                )
            else:
                routed.service = target
        if outcome.changes:
            routed.notes["event_rules"] = rules.describe(outcome.changes)
        if outcome.failures:
            routed.notes["event_rule_failures"] = rules.describe(outcome.failures)
            _failures.add(len(outcome.failures))
            log.warning(
                "service %s: event rules failed on an alert (it pages as if they did not "
                "match): %s",
                service.id,
                routed.notes["event_rule_failures"],
            )
        if outcome.suppressed_by:
            routed.suppressed_by = outcome.suppressed_by
            await self.store.record_suppressed(
                routed.service.id, routed.dedup_key, alert, outcome.suppressed_by
            )
            _suppressed.add(1)
        return routed

    async def group(
        self, service: incidents_pb2.Service, alert: incidents_pb2.Alert, dedup_key: str
    ) -> tuple[str, int]:
        """(the dedup key to file the alert under, the time-grouping window in ms or 0):
        its own key while an incident is open under it, else its service's group key."""
        if not service.HasField("grouping"):
            return dedup_key, 0
        key = rules.group_key(service.grouping, alert)
        if key is None or await self.incidents.find_open(service.id, dedup_key) is not None:
            return dedup_key, 0
        alert.details["dedup_key_original"] = dedup_key
        return key, max(int(service.grouping.window.ToMilliseconds()), 0)
