"""What a page says: the SMS body, the voice TwiML, and how replies are read back.

Pure functions, no I/O. Alert text comes from strangers (monitoring systems, humans), so
it is cleaned before it goes anywhere: Twilio's TwiML builders escape XML but do not drop
control characters, and one stray byte would make the whole document unparseable.

SMS length is counted in segments, the unit carriers bill and deliver in. A message that
is pure GSM-7 fits 160 septets in one segment or 153 per part when split (extension
characters such as `{` or `€` cost two septets and are never split across parts); anything
else is sent as UCS-2: 70 UTF-16 code units in one segment or 67 per part (a character
outside the Basic Multilingual Plane, e.g. an emoji, costs two and is never split).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from twilio.twiml.voice_response import VoiceResponse

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

MAX_SMS_SEGMENTS = 2
TWIML_MAX_CHARS = 4000
"""Twilio's limit on the `Twiml` parameter of a call."""

SERVICE_NAME_MAX_CHARS = 40
SUMMARY_ROOM_CHARS = 40
"""However long the service name, an SMS keeps room for this much summary."""
VOICE_SUMMARY_MAX_CHARS = 300
"""Longer than this is not useful read aloud at 3 a.m.; the SMS carries the detail."""

ELLIPSIS = "..."
"""Three GSM-7 dots, not U+2026, which would switch the whole SMS to UCS-2."""

ACK_DIGIT = "4"
RESOLVE_DIGIT = "6"
MENU_PROMPT = f"Press {ACK_DIGIT} to acknowledge, {RESOLVE_DIGIT} to resolve."
NO_ANSWER_GOODBYE = "No response received. Goodbye."
MAX_MENU_REPEATS = 10

_REPLY_CODE = re.compile(r"\d{1,8}")


def clean_text(text: str) -> str:
    """Drop control, format, surrogate and unassigned characters; collapse whitespace."""
    kept = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    return " ".join(kept.split())


def is_gsm7(text: str) -> bool:
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


def sms_segments(text: str) -> int:
    """How many SMS segments `text` is sent as (an empty body still occupies one)."""
    if is_gsm7(text):
        costs = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
        single, per_part = 160, 153
    else:
        costs = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
        single, per_part = 70, 67
    if sum(costs) <= single:
        return 1
    segments, used = 1, 0
    for cost in costs:
        if used + cost > per_part:
            segments, used = segments + 1, 0
        used += cost
    return segments


def _truncate_to_fit(text: str, fits: Callable[[str], bool], field: str) -> str:
    """The longest prefix of `text` (ellipsis appended when cut) for which `fits` holds."""
    if fits(text):
        return text

    def cut(n: int) -> str:
        return text[:n].rstrip() + ELLIPSIS

    if not fits(cut(0)):
        raise ValueError(
            f"the message exceeds its length limit even with {field} cut to nothing; "
            "shorten the other parts (e.g. the action URL)"
        )
    low, high = 0, len(text) - 1  # cut(low) fits; answer is in [low, high]
    while low < high:
        mid = (low + high + 1) // 2
        if fits(cut(mid)):
            low = mid
        else:
            high = mid - 1
    return cut(low)


def _validate_reply_code(reply_code: str) -> None:
    if not _REPLY_CODE.fullmatch(reply_code):
        raise ValueError(f"reply_code must be 1 to 8 digits, got {reply_code!r}")


def _short_service_name(service_name: str) -> str:
    service = clean_text(service_name) or "unknown service"
    if len(service) > SERVICE_NAME_MAX_CHARS:
        cut = SERVICE_NAME_MAX_CHARS - len(ELLIPSIS)
        service = service[:cut].rstrip() + ELLIPSIS
    return service


def incident_words(number: int) -> str:
    """How a page names its incident: "#18" ("" before the incident has a number)."""
    return f"#{number}" if number > 0 else ""


def sms_body(
    service_name: str, summary: str, reply_code: str, *, number: int = 0, link: str = ""
) -> str:
    """The page as an SMS that fits in `MAX_SMS_SEGMENTS`, the summary cut if needed:
    the incident's number first, then `link` (the incident page, links.incident_link) last."""
    _validate_reply_code(reply_code)
    if link:
        _validate_action_url(link, "link")
    service = _short_service_name(service_name)
    head = f"tocsin {incident_words(number)}:" if number > 0 else "tocsin:"
    tail = f" {link}" if link else ""

    def render(name: str, text: str) -> str:
        return (
            f"{head} [{name}] {text} - reply '{reply_code}a' to ack, '{reply_code}r' to resolve"
            + tail
        )

    def fits(body: str) -> bool:
        return sms_segments(body) <= MAX_SMS_SEGMENTS

    # A long name in UCS-2 (say, 40 emoji) could crowd out the summary: keep room for one.
    room = "x" * SUMMARY_ROOM_CHARS
    service = _truncate_to_fit(service, lambda name: fits(render(name, room)), "service_name")
    text = _truncate_to_fit(
        clean_text(summary) or "(no summary)", lambda text: fits(render(service, text)), "summary"
    )
    return render(service, text)


def _validate_action_url(url: str, field: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{field} must be an absolute http(s) URL, got {url!r}")


def _validate_repeat(repeat: int) -> None:
    if not 1 <= repeat <= MAX_MENU_REPEATS:
        raise ValueError(f"repeat must be between 1 and {MAX_MENU_REPEATS}, got {repeat}")


def _add_menu(
    response: VoiceResponse,
    action_url: str,
    repeat: int,
    gather_timeout_s: int,
    first_words: str | None,
) -> None:
    """`repeat` Gathers in a row: silence falls through to the next, then goodbye."""
    for attempt in range(repeat):
        gather = response.gather(
            num_digits=1, action=action_url, method="POST", timeout=gather_timeout_s
        )
        if attempt == 0 and first_words:
            gather.say(first_words)
        gather.say(MENU_PROMPT)
    response.say(NO_ANSWER_GOODBYE)
    response.hangup()


def _fit_twiml(render: Callable[[str], str], text: str, field: str) -> str:
    fitted = _truncate_to_fit(text, lambda t: len(render(t)) <= TWIML_MAX_CHARS, field)
    return render(fitted)


def voice_twiml(
    service_name: str,
    summary: str,
    gather_action_url: str,
    *,
    repeat: int = 3,
    gather_timeout_s: int = 6,
    number: int = 0,
    link: str = "",
) -> str:
    """TwiML that reads the alert and offers the ack/resolve menu up to `repeat` times.

    The incident's number is spoken ("incident 18"); with `link` (the incident page, as
    the SMS carries it) the call names where the page is: the link's host and the number,
    since a signed URL cannot be read out.

    The alert is spoken inside the first Gather so a keypress can interrupt it. A digit
    other than 4 or 6 still goes to `gather_action_url`; answer it with
    `gather_response_twiml(..., retry_action_url=...)` to offer the menu again.
    """
    _validate_action_url(gather_action_url, "gather_action_url")
    _validate_repeat(repeat)
    service = _short_service_name(service_name)
    spoken = clean_text(summary) or "no summary"
    if len(spoken) > VOICE_SUMMARY_MAX_CHARS:
        spoken = spoken[: VOICE_SUMMARY_MAX_CHARS - len(ELLIPSIS)].rstrip() + ELLIPSIS

    if link:
        _validate_action_url(link, "link")
    spoken_number = f"Incident {number}, for " if number > 0 else "Alert for "
    where = f". Its page is on {urlsplit(link).hostname}, incident {number}." if link else ""

    def render(text: str) -> str:
        response = VoiceResponse()
        intro = f"This is tocsin. {spoken_number}{service}: {text}{where}"
        _add_menu(response, gather_action_url, repeat, gather_timeout_s, intro)
        return str(response.to_xml())

    return _fit_twiml(render, spoken, "summary")


def gather_response_twiml(
    message: str,
    *,
    retry_action_url: str | None = None,
    repeat: int = 2,
    gather_timeout_s: int = 6,
) -> str:
    """The answer to a keypress: say `message`, then hang up or offer the menu again.

    "Acknowledged. Goodbye." hangs up; "Sorry, that is not an option." passes
    `retry_action_url` so the menu is offered `repeat` more times.
    """
    if retry_action_url is not None:
        _validate_action_url(retry_action_url, "retry_action_url")
        _validate_repeat(repeat)

    def render(text: str) -> str:
        response = VoiceResponse()
        if retry_action_url is None:
            response.say(text)
            response.hangup()
        else:
            _add_menu(response, retry_action_url, repeat, gather_timeout_s, text)
        return str(response.to_xml())

    return _fit_twiml(render, clean_text(message), "message")


def test_sms_body(user_name: str) -> str:
    """A test page: proves the number works and asks for nothing."""
    name = _short_service_name(user_name)
    return f"tocsin: test page for {name}. Text pages reach you here; no action needed."


def test_voice_twiml(user_name: str) -> str:
    """A test call: says who it is for and hangs up (no menu, nothing to acknowledge)."""
    response = VoiceResponse()
    name = _short_service_name(user_name)
    response.say(f"This is a tocsin test call for {name}. Voice pages reach you here. Goodbye.")
    response.hangup()
    return str(response.to_xml())


class ReplyAction(StrEnum):
    ACK = "ack"
    RESOLVE = "resolve"
    OPT_OUT = "opt_out"
    """STOP and friends: Twilio blocks further SMS to this number until START."""
    OPT_IN = "opt_in"
    HELP = "help"


@dataclass(frozen=True)
class SmsReply:
    action: ReplyAction
    code: str | None = None
    """The page's reply code, when the reply named one ("4a"); None for a bare "ack"."""


OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_KEYWORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

_ACK_WORDS = {"ack": ReplyAction.ACK, "acknowledge": ReplyAction.ACK}
_RESOLVE_WORDS = {"resolve": ReplyAction.RESOLVE, "res": ReplyAction.RESOLVE}
_WORD_ACTIONS = {**_ACK_WORDS, **_RESOLVE_WORDS}
_LETTER_ACTIONS = {"a": ReplyAction.ACK, "r": ReplyAction.RESOLVE}
_CODE_FIRST = re.compile(r"(?P<code>\d{1,8})\s*(?P<word>[a-z]+)")
_WORD_FIRST = re.compile(r"(?P<word>[a-z]+)(?:\s+(?P<code>\d{1,8}))?")


def parse_sms_reply(body: str) -> SmsReply | None:
    """Read an SMS reply: "4a", "4 ack", "4r", "4 resolve", "ack", "resolve 4", STOP...

    Single letters need a code ("a" alone is too easy to send by accident). Returns None
    for anything else.
    """
    text = " ".join(body.split()).strip(" .!").lower()
    if text.upper() in OPT_OUT_KEYWORDS:
        return SmsReply(ReplyAction.OPT_OUT)
    if text.upper() in OPT_IN_KEYWORDS:
        return SmsReply(ReplyAction.OPT_IN)
    if text.upper() in HELP_KEYWORDS:
        return SmsReply(ReplyAction.HELP)
    if match := _CODE_FIRST.fullmatch(text):
        word = match["word"]
        action = _LETTER_ACTIONS.get(word) or _WORD_ACTIONS.get(word)
        return SmsReply(action, match["code"]) if action else None
    if match := _WORD_FIRST.fullmatch(text):
        action = _WORD_ACTIONS.get(match["word"])
        return SmsReply(action, match["code"]) if action else None
    return None


def parse_keypress(digits: str) -> ReplyAction | None:
    """What a Gather keypress means: 4 acknowledges, 6 resolves, anything else nothing."""
    return {ACK_DIGIT: ReplyAction.ACK, RESOLVE_DIGIT: ReplyAction.RESOLVE}.get(digits.strip())
