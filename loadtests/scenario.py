"""The paging set-up a run applies, and how an SMS is traced back to the alert behind it.

Each new incident's summary names the run and the incident's number (`lt <run> <n>`), and
each dedup storm's names its storm (`storm <run> <k>`); the SMS body carries the summary,
so the fake Twilio's record of an SMS says which alert it pages for and, by its `To`
number, which user it went to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tocsin.client.apply import Applier
from tocsin.client.client import TocsinClient
from tocsin.client.configfile import load_config_file

CONFIG_FILE = Path(__file__).with_name("oncall.yaml")
PRIMARY_NUMBER = "+12025550101"
SECONDARY_NUMBER = "+12025550102"
ESCALATING = "lt-escalating"
SINGLE = "lt-single"
INTEGRATION_KEYS = {
    ESCALATING: "10ad7e5710ad7e5710ad7e5710ad7e57",
    SINGLE: "10ad7e5710ad7e5710ad7e5710ad0001",
}
LEVEL_1_DELAY_MS = 60_000
"""Level 1's delay on lt-two-levels (oncall.yaml): when the secondary is paged."""

_SUMMARY = re.compile(r"\b(lt|storm) ([0-9a-f]{8}) (\d+)\b")


async def apply_config(client: TocsinClient) -> int:
    """Make the stack match oncall.yaml (idempotent); returns how many objects changed."""
    result = await Applier(client, dry_run=False).apply(load_config_file(CONFIG_FILE))
    return len(result.changes)


def incident_summary(run_id: str, n: int) -> str:
    return f"lt {run_id} {n} disk full on db{n % 100}"


def storm_summary(run_id: str, k: int) -> str:
    return f"storm {run_id} {k} CPU above 90% on api-{k}"


def incident_dedup_key(run_id: str, n: int) -> str:
    return f"lt-{run_id}-{n}"


def storm_dedup_key(run_id: str, k: int) -> str:
    return f"storm-{run_id}-{k}"


@dataclass(frozen=True)
class SmsKey:
    """Which alert an SMS pages for: kind 'lt' (a new incident) or 'storm', and its number."""

    kind: str
    number: int


def sms_key(body: str | None, run_id: str) -> SmsKey | None:
    """The alert an SMS of this run pages for; None for anything else."""
    match = _SUMMARY.search(body or "")
    if match is None or match.group(2) != run_id:
        return None
    return SmsKey(match.group(1), int(match.group(3)))
