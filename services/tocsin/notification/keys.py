"""Where the notification service keeps things in Redis.

Users' settings are small and change rarely, so they share one hash tag, `{contacts}`,
and every settings change is one atomic script:

    tocsin:{contacts}:user:<user>            string  GetUserNotificationSettingsResponse
                                                     (contact methods by id, rules by delay)
    tocsin:{contacts}:cm-owner               hash    contact method id -> user id
    tocsin:{contacts}:number:<e164>          hash    contact method id -> user id, for replies
    tocsin:{contacts}:codes:<user>           hash    reply code -> "<incident>|<expires_ms>"
                                                     (answerable until expires, held a
                                                     quarantine longer; lua/page_prepare.lua)
    tocsin:{contacts}:code-of:<user>         hash    incident -> reply code
    tocsin:{contacts}:code-tier:<user>:<n>   zset    tier n's codes (1: 1-99, 2: 100-999,
                                                     ...) -> when each is free again
    tocsin:{contacts}:latest:<e164>          string  "<incident>|<user>|<expires_ms>": the
                                                     latest page to a number (plain "ack")
    tocsin:{contacts}:test-attempts:<user>   hash    attempt id -> attempt JSON of the
                                                     user's test pages and notices (a
                                                     channel target's notices under its id)
    tocsin:{contacts}:test-sending           zset    those attempts in SENDING, by start ms
    tocsin:{contacts}:notice:<sha256[:32]>   string  a notice's idempotency key (30 days)

Everything about paging one incident lives under its shard's tag T =
`shard_tag(incident_shard(id))`, the slot of the incident itself, so a cycle, its timers
and its attempts change together in one script:

    tocsin:T:notify:inc:<id>:state           hash    status mirror (st, v, sum, svc) and
                                                     the cycle counter (seq)
    tocsin:T:notify:inc:<id>:cycles          hash    user -> current cycle id
    tocsin:T:notify:cycle:<cycle>            hash    the cycle: inc, user, tp, code, rules
                                                     (JSON snapshot), n, c, k (Notify key),
                                                     lv (next level due), x (cancelled)
    tocsin:T:notify:inc:<id>:attempts        hash    attempt id -> attempt JSON
    tocsin:T:notify:sending                  zset    "<attempts key>|<attempt id>" -> start ms
    tocsin:T:notify:idem:<key>               string  a Notify idempotency key (TTL retention)
    tocsin:T:notify:timers ...               the timer library's keys (see timer_keys)

Rate limits: `tocsin:{rate:<channel>:<kind>:<number>}:next`, one slot each. Provider ids:
`tocsin:sid:{<sid>}` -> attempt id. Twilio webhooks already handled (a MessageSid, a
CallSid and its digits, a status callback): `tocsin:seen:{<kind>:<sid>...}`, with a TTL.
"""

from __future__ import annotations

import hashlib

from tocsin.runtime import timers
from tocsin.runtime.events import incident_shard
from tocsin.runtime.timers import shard_tag

CONTACTS = "tocsin:{contacts}"
CM_OWNER = f"{CONTACTS}:cm-owner"
TEST_SENDING = f"{CONTACTS}:test-sending"
NAMESPACE = "notify"


def user_settings(user_id: str) -> str:
    return f"{CONTACTS}:user:{user_id}"


def number_index(number: str) -> str:
    return f"{CONTACTS}:number:{number}"


def reply_codes(user_id: str) -> str:
    return f"{CONTACTS}:codes:{user_id}"


def code_of(user_id: str) -> str:
    return f"{CONTACTS}:code-of:{user_id}"


def code_tier_prefix(user_id: str) -> str:
    """The tier keys, `<this><n>`, are named in lua/page_prepare.lua."""
    return f"{CONTACTS}:code-tier:{user_id}:"


def latest_page(number: str) -> str:
    return f"{CONTACTS}:latest:{number}"


def test_attempts(user_id: str) -> str:
    return f"{CONTACTS}:test-attempts:{user_id}"


def notice(idempotency_key: str) -> str:
    return f"{CONTACTS}:notice:{notice_digest(idempotency_key)}"


def notice_digest(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


def prefix(shard: int) -> str:
    return f"tocsin:{shard_tag(shard)}:{NAMESPACE}:"


def timer_tag(shard: int) -> str:
    """The tag the timer library builds this namespace's timer keys from: '{t3}:notify'."""
    return timers.timer_tag(shard, NAMESPACE)


def timer_keys(shard: int) -> list[str]:
    return timers.timer_keys(shard, NAMESPACE)


def incident_state(incident_id: str) -> str:
    return f"{prefix(incident_shard(incident_id))}inc:{incident_id}:state"


def incident_cycles(incident_id: str) -> str:
    return f"{prefix(incident_shard(incident_id))}inc:{incident_id}:cycles"


def incident_attempts(incident_id: str) -> str:
    return f"{prefix(incident_shard(incident_id))}inc:{incident_id}:attempts"


def cycle(cycle_id: str, incident_id: str) -> str:
    return f"{prefix(incident_shard(incident_id))}cycle:{cycle_id}"


def sending(shard: int) -> str:
    return f"{prefix(shard)}sending"


def idempotency(incident_id: str, key: str) -> str:
    return f"{prefix(incident_shard(incident_id))}idem:{key}"


def provider_sid(sid: str) -> str:
    return f"tocsin:sid:{{{sid}}}"


def webhook_seen(name: str) -> str:
    return f"tocsin:seen:{{{name}}}"


def rate_slot(name: str) -> str:
    return f"tocsin:{{rate:{name}}}:next"


def rate_slots(name: str) -> str:
    """The reserved slots of a rate limit (sorted set), for lua/reserve_gap.lua."""
    return f"tocsin:{{rate:{name}}}:slots"


def as_bytes(value: bytes | str) -> bytes:
    """A Redis reply as bytes (the clients return bytes; their types say bytes | str)."""
    return value if isinstance(value, bytes) else value.encode()


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
