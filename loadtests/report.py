"""From raw observations to the figures of a run: latency, loss, duplicates, lateness, CPU.

Definitions (what each figure measures):

- alert_to_first_sms: intended send time of the Trigger (or /v2/enqueue) -> the fake
  Twilio's arrival time of that incident's SMS to lt-primary (both CLOCK_MONOTONIC).
- lost_pages: incidents whose Trigger succeeded and that got no SMS to lt-primary (and,
  with escalation, none to lt-secondary) by the end of the drain; duplicate_pages: every
  SMS beyond the first per (incident, user). Storm incidents count too.
- level0_fire_lag: the incident's created_at -> its level 0 firing (the escalation
  page's `at`): outbox event consumption and the fast path, on the stack's clock.
- escalation timer lateness: level 1's firing (its page's `at`) minus its due time
  (level 0's firing + the 1 min delay), both read by the escalation service from the
  real clock: how late the timer worker picked the due timer up and fired it.
- due_to_escalated_sms: level 1's due time -> arrival of the SMS to lt-secondary: the
  lateness plus WhoIsOnCall, the state write and the Notify/Twilio path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

from loadtests.collect import SmsLog
from loadtests.scenario import LEVEL_1_DELAY_MS, SmsKey, incident_dedup_key
from loadtests.senders import SendResult
from loadtests.stats import decode, histogram_of_ns, summary_ms

TARGETS = {
    "incidents_per_s": 200,
    "alert_to_first_sms_p99_ms": 25,
    "repeat_alerts_per_s": 2000,
    "escalation_lateness_p99_ms": 20,
}


@dataclass
class Inputs:
    options_rate: float
    duration: float
    repeat_rate: float
    escalation: bool
    run_id: str
    incidents: SendResult
    repeats: SendResult | None
    sms: SmsLog
    listed: dict[str, tuple[str, int]]
    """dedup key -> (incident id, created_at ms)."""
    fired: dict[str, dict[int, int]]
    """incident id -> level -> fire time (ms)."""
    storm_alert_counts: list[int]
    wall_minus_monotonic_ns: int
    cpu_first_sms: dict[str, float] | None
    cpu_first_sms_window_s: float
    machine_busy_s: float
    generator_s: float
    """Busy CPU seconds of the whole machine over the same window (every process)."""
    idle_cpu_per_s: float
    """The stack's CPU seconds per second with no load (timer polls, heartbeats)."""
    cpu_escalation: dict[str, float] | None
    fake_cpu_s: float | None
    wakes_first_sms: dict[str, int] | None = None
    """Voluntary context switches per process over the same window as cpu_first_sms."""


def _duplicates(pages: dict[SmsKey, list[int]]) -> int:
    return sum(len(arrivals) - 1 for arrivals in pages.values())


def _new_incidents(i: Inputs) -> tuple[dict[str, Any], list[int]]:
    sent = i.incidents
    first_sms: list[int] = []
    lost, paged_despite_error, last_arrival = 0, 0, 0
    for n in range(sent.sent):
        arrivals = i.sms.primary.get(SmsKey("lt", n))
        if sent.ok_flags[n] and not arrivals:
            lost += 1
        if not arrivals:
            continue
        if not sent.ok_flags[n]:
            paged_despite_error += 1
        first = min(arrivals)
        last_arrival = max(last_arrival, first)
        first_sms.append(first - sent.intended_ns[n])
    trigger = decode(sent.histogram)
    paged = len(first_sms)
    span_s = (last_arrival - sent.intended_ns[0]) / 1e9 if paged > 1 else 0.0
    created = [c for c in sent.created if c is not None]
    figures = {
        "offered_per_s": i.options_rate,
        "sent": sent.sent,
        "trigger_ok": sent.ok,
        "trigger_errors": sent.errors,
        "created_false": created.count(False),
        "trigger_latency_ms": summary_ms(trigger),
        "alert_to_first_sms_ms": summary_ms(histogram_of_ns(first_sms)),
        "paged": paged,
        "achieved_per_s": round((paged - 1) / span_s, 1) if span_s else None,
        "lost_pages": lost,
        "duplicate_pages": _duplicates({k: v for k, v in i.sms.primary.items() if k.kind == "lt"}),
        "paged_although_trigger_failed": paged_despite_error,
        "rejected_sms": i.sms.rejected,
        "sms_to_unknown_numbers": i.sms.other_number,
        "sender_cpu_s": round(sent.cpu_s, 2),
    }
    return figures, first_sms


def _escalation(i: Inputs) -> dict[str, Any]:
    lag: list[int] = []
    lateness: list[int] = []
    due_to_sms: list[int] = []
    not_fired = lost = 0
    ok = i.incidents.ok_flags
    for n in range(i.incidents.sent):
        listed = i.listed.get(incident_dedup_key(i.run_id, n))
        if listed is None:
            continue
        incident_id, created_ms = listed
        fired = i.fired.get(incident_id, {})
        if 0 in fired:
            lag.append((fired[0] - created_ms) * 1_000_000)
        if not i.escalation:
            continue
        arrivals = i.sms.secondary.get(SmsKey("lt", n))
        if ok[n] and not arrivals:
            lost += 1
        if 0 not in fired or 1 not in fired:
            not_fired += 1
            continue
        due_ms = fired[0] + LEVEL_1_DELAY_MS
        lateness.append((fired[1] - due_ms) * 1_000_000)
        if arrivals:
            due_ns = due_ms * 1_000_000 - i.wall_minus_monotonic_ns
            due_to_sms.append(min(arrivals) - due_ns)
    figures: dict[str, Any] = {
        "incidents_found": len(i.listed),
        "level0_fire_lag_ms": summary_ms(histogram_of_ns(lag)),
        "measured": i.escalation,
    }
    if i.escalation:
        level1 = sorted(fired[1] for fired in i.fired.values() if 1 in fired)
        span_s = (level1[-1] - level1[0]) / 1000 if len(level1) > 1 else 0.0
        figures |= {
            "level1_fires_per_s": round((len(level1) - 1) / span_s, 1) if span_s else None,
            "timer_lateness_ms": summary_ms(histogram_of_ns([max(0, x) for x in lateness])),
            "early_fires": sum(1 for x in lateness if x < 0),
            "due_to_escalated_sms_ms": summary_ms(histogram_of_ns(due_to_sms)),
            "level1_not_fired": not_fired,
            "lost_pages": lost,
            "duplicate_pages": _duplicates(i.sms.secondary),
            "clock_resolution_ms": 1,
        }
    return figures


def _repeats(i: Inputs) -> dict[str, Any]:
    storms = len(i.storm_alert_counts)
    storm_pages = {k: v for k, v in i.sms.primary.items() if k.kind == "storm"}
    figures: dict[str, Any] = {
        "storms": storms,
        "storm_pages_lost": storms - len(storm_pages),
        "storm_pages_duplicate": _duplicates(storm_pages),
        "offered_per_s": i.repeat_rate,
    }
    if i.repeats is None:
        return figures
    absorbed = sum(i.storm_alert_counts) - storms
    figures |= {
        "sent": i.repeats.sent,
        "ok": i.repeats.ok,
        "errors": i.repeats.errors,
        "absorbed": absorbed,
        "absorbed_per_s": round(absorbed / i.duration, 1),
        "latency_ms": summary_ms(decode(i.repeats.histogram)),
        "sender_cpu_s": round(i.repeats.cpu_s, 2),
    }
    return figures


def _cpu(i: Inputs, paged: int) -> dict[str, Any]:
    """CPU from the start of the load until every first SMS arrived (and, with escalation,
    from then until every level-1 SMS arrived), in CPU seconds and cores."""
    window = i.cpu_first_sms_window_s
    senders = i.incidents.cpu_s + (i.repeats.cpu_s if i.repeats else 0.0) + i.generator_s
    figures: dict[str, Any] = {
        "fake_twilio_s": round(i.fake_cpu_s, 2) if i.fake_cpu_s is not None else None,
        "generator_s": round(senders, 2),
        "machine_busy_cores": round(i.machine_busy_s / window, 2),
    }
    if i.cpu_first_sms is None:
        return figures | {"measured": False}
    first = sum(i.cpu_first_sms.values())
    idle = i.idle_cpu_per_s * window
    ours = first + senders + (i.fake_cpu_s or 0.0)
    figures |= {
        "stack_cores": round(first / window, 2),
        "other_processes_cores": round(max(0.0, i.machine_busy_s - ours) / window, 2),
        "measured": True,
        "until_first_sms_s": round(first, 2),
        "until_first_sms_window_s": round(i.cpu_first_sms_window_s, 1),
        "until_first_sms_by_process_s": i.cpu_first_sms,
        "idle_cpu_per_s": round(i.idle_cpu_per_s, 3),
        "per_incident_ms": round(first * 1000 / max(1, paged), 3),
        "per_incident_above_idle_ms": round((first - idle) * 1000 / max(1, paged), 3),
    }
    if i.wakes_first_sms:
        figures |= {
            "wakeups_per_incident": round(sum(i.wakes_first_sms.values()) / max(1, paged), 2),
            "wakeups_per_incident_by_process": {
                name: round(count / max(1, paged), 2) for name, count in i.wakes_first_sms.items()
            },
        }
    if i.escalation and i.cpu_escalation is not None:
        second = sum(i.cpu_escalation.values())
        figures |= {
            "escalation_phase_s": round(second, 2),
            "escalation_phase_by_process_s": i.cpu_escalation,
            "per_escalated_level_ms": round(second * 1000 / max(1, paged), 3),
        }
    return figures


def build(i: Inputs) -> dict[str, Any]:
    incidents, _ = _new_incidents(i)
    return {
        "incidents": incidents,
        "escalation": _escalation(i),
        "repeats": _repeats(i),
        "cpu": _cpu(i, incidents["paged"]),
    }


def _p(result: dict[str, Any], *path: str) -> Any:
    node: Any = result
    for name in path:
        if not isinstance(node, dict) or name not in node:
            return None
        node = node[name]
    return node


def add_ratios_and_targets(result: dict[str, Any]) -> None:
    floor = _p(result, "floor", "latency_ms")
    first = _p(result, "incidents", "alert_to_first_sms_ms")
    if floor and first and floor["p99"]:
        result["ratio_to_floor"] = {
            name: round(first[name] / floor[name], 1)
            for name in ("p50", "p99", "p999")
            if first[name] and floor[name]
        }
    zero_loss = all(
        (_p(result, *path) or 0) == 0
        for path in (
            ("incidents", "lost_pages"),
            ("incidents", "duplicate_pages"),
            ("escalation", "lost_pages"),
            ("escalation", "duplicate_pages"),
            ("repeats", "storm_pages_lost"),
            ("repeats", "storm_pages_duplicate"),
        )
    )
    checks = {
        "incidents_per_s": (_p(result, "incidents", "achieved_per_s"), ">="),
        "alert_to_first_sms_p99_ms": (first["p99"] if first else None, "<="),
        "repeat_alerts_per_s": (_p(result, "repeats", "absorbed_per_s"), ">="),
        "escalation_lateness_p99_ms": (_p(result, "escalation", "timer_lateness_ms", "p99"), "<="),
    }
    targets: dict[str, Any] = {}
    for name, (measured, sense) in checks.items():
        goal = TARGETS[name]
        met = None
        if measured is not None:
            met = measured >= goal if sense == ">=" else measured <= goal
        targets[name] = {"target": goal, "measured": measured, "met": met}
    targets["zero_lost_and_duplicate_pages"] = {"target": 0, "met": zero_loss}
    result["targets"] = targets


def text(result: dict[str, Any]) -> str:
    """The human summary printed at the end of a run."""

    def fig(summary: dict[str, Any] | None) -> str:
        if not summary or not summary.get("count"):
            return "-"
        return " / ".join(f"{summary[k]:.2f}" for k in ("p50", "p99", "p999", "max"))

    inc, esc, rep, cpu = (result.get(k, {}) for k in ("incidents", "escalation", "repeats", "cpu"))
    lines = [
        "latency, ms                         p50 / p99 / p999 / max",
        f"  floor (4 bare gRPC hops)          {fig(_p(result, 'floor', 'latency_ms'))}",
        f"  trigger reply                     {fig(inc.get('trigger_latency_ms'))}",
        f"  alert -> first SMS                {fig(inc.get('alert_to_first_sms_ms'))}",
        f"  created -> level 0 fired          {fig(esc.get('level0_fire_lag_ms'))}",
    ]
    if esc.get("measured"):
        lines += [
            f"  level-1 timer lateness            {fig(esc.get('timer_lateness_ms'))}"
            f"  (level 1 fired at {esc.get('level1_fires_per_s')}/s)",
            f"  level-1 due -> SMS                {fig(esc.get('due_to_escalated_sms_ms'))}",
        ]
    if rep.get("sent"):
        lines.append(f"  repeat alert reply                {fig(rep.get('latency_ms'))}")
    lines += [
        f"incidents: {inc.get('sent')} sent at {inc.get('offered_per_s')}/s, "
        f"{inc.get('paged')} paged, achieved {inc.get('achieved_per_s')}/s, "
        f"errors {inc.get('trigger_errors')}",
        f"pages: lost {inc.get('lost_pages')}, duplicate {inc.get('duplicate_pages')}"
        + (
            f"; level 1: lost {esc.get('lost_pages')}, duplicate {esc.get('duplicate_pages')}, "
            f"not fired {esc.get('level1_not_fired')}"
            if esc.get("measured")
            else ""
        )
        + f"; storms: lost {rep.get('storm_pages_lost')}, "
        f"duplicate {rep.get('storm_pages_duplicate')}",
    ]
    if rep.get("sent"):
        lines.append(
            f"repeats: {rep['sent']} sent at {rep['offered_per_s']}/s, {rep['absorbed']} absorbed "
            f"({rep['absorbed_per_s']}/s), errors {rep['errors']}"
        )
    if cpu.get("measured"):
        lines.append(
            f"stack CPU: {cpu['per_incident_ms']} ms per incident until its first SMS "
            f"({cpu['per_incident_above_idle_ms']} ms above idle; "
            f"{cpu['until_first_sms_by_process_s']})"
        )
        lines.append(
            f"cores busy meanwhile: machine {cpu['machine_busy_cores']}, stack "
            f"{cpu['stack_cores']}, other processes (not this run) {cpu['other_processes_cores']}"
        )
        if "wakeups_per_incident" in cpu:
            lines.append(
                f"wake-ups per incident (voluntary context switches, every thread): "
                f"{cpu['wakeups_per_incident']} ({cpu['wakeups_per_incident_by_process']})"
            )
    if "redis" in result:
        top = list(result["redis"]["by_command"].items())[:8]
        lines.append(
            f"Redis commands per incident: {result['redis']['commands_per_incident']} ("
            + ", ".join(f"{name} {calls}" for name, calls in top)
            + ")"
        )
        if result["redis"].get("round_trips_per_incident") is not None:
            lines.append(
                "Redis round trips per incident (reads processed): "
                f"{result['redis']['round_trips_per_incident']}"
            )
    if "ratio_to_floor" in result:
        lines.append(f"alert -> first SMS / floor: {result['ratio_to_floor']}")
    for name, target in result.get("targets", {}).items():
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        lines.append(f"target {name}: {verdict} ({target.get('measured')} vs {target['target']})")
    return "\n".join(lines)


def histograms_for_plot(result: dict[str, Any]) -> dict[str, HdrHistogram]:
    named = {
        "floor: 4 bare gRPC hops": ("floor", "latency_ms"),
        "alert -> first SMS": ("incidents", "alert_to_first_sms_ms"),
        "trigger reply": ("incidents", "trigger_latency_ms"),
        "level-1 timer lateness": ("escalation", "timer_lateness_ms"),
        "level-1 due -> SMS": ("escalation", "due_to_escalated_sms_ms"),
        "repeat alert reply": ("repeats", "latency_ms"),
    }
    found = {}
    for label, path in named.items():
        summary = _p(result, *path)
        if summary and summary.get("hdr"):
            found[label] = decode(summary["hdr"].encode())
    return found
