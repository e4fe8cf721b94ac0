from xml.etree import ElementTree

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tocsin.notification.messages import (
    MENU_PROMPT,
    TWIML_MAX_CHARS,
    ReplyAction,
    SmsReply,
    clean_text,
    gather_response_twiml,
    is_gsm7,
    parse_keypress,
    parse_sms_reply,
    sms_body,
    sms_segments,
    voice_twiml,
)

ACTION_URL = "https://tocsin.example.com/twilio/gather?attempt=abc&n=1"


def test_clean_text_drops_control_and_invisible_characters() -> None:
    dirty = "disk\x00 full\x1b[31m on\u200b db1\x07\ufffe\r\n\tnow  "
    assert clean_text(dirty) == "disk full [31m on db1 now"


def test_clean_text_keeps_printable_unicode() -> None:
    assert clean_text("Zürich  😀 наш сервер") == "Zürich 😀 наш сервер"


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("{" * 80, 1),  # extension characters cost two septets
        ("{" * 81, 2),
        ("a" * 152 + "€" + "a" * 152, 3),  # € is not split across parts
        ("ж" * 70, 1),
        ("ж" * 71, 2),
        ("ж" * 134, 2),
        ("ж" * 135, 3),
        ("😀" * 35, 1),  # outside the BMP: two UTF-16 units each
        ("😀" * 36, 2),
        ("ж" * 66 + "😀" + "ж" * 66, 3),  # a surrogate pair is not split across parts
        ("a" * 159 + "—", 3),  # one non-GSM character turns all 160 into UCS-2
    ],
)
def test_sms_segments(text: str, segments: int) -> None:
    assert sms_segments(text) == segments


def test_sms_body_reads_like_a_page() -> None:
    body = sms_body("Payments API", "disk full on db1", "4")
    assert body == "tocsin: [Payments API] disk full on db1 - reply '4a' to ack, '4r' to resolve"
    assert is_gsm7(body)


def test_sms_body_truncates_a_long_summary_to_two_segments() -> None:
    body = sms_body("Payments API", "disk full on db1 " * 50, "17")
    assert sms_segments(body) == 2
    assert "... - reply '17a' to ack, '17r' to resolve" in body
    assert is_gsm7(body)
    # Two GSM-7 parts hold 306 septets ("[" and "]" cost two); the cut may drop one space.
    septets = len(body) + sum(ch in "[]" for ch in body)
    assert 305 <= septets <= 306


def test_sms_body_counts_ucs2_when_the_summary_needs_it() -> None:
    body = sms_body("Платежи", "диск переполнен на db1 " * 20, "4")
    assert not is_gsm7(body)
    assert sms_segments(body) == 2
    assert len(body) <= 2 * 67
    assert body.endswith("reply '4a' to ack, '4r' to resolve")


def test_sms_body_cleans_control_characters_and_shortens_the_service_name() -> None:
    body = sms_body("svc\x00" + "x" * 200, "line one\nline two\x1b", "4")
    assert "\x00" not in body and "\n" not in body and "\x1b" not in body
    assert "line one line two" in body
    assert "[svc " + "x" * 33 + "...]" in body


def test_sms_body_keeps_room_for_the_summary_after_a_wide_service_name() -> None:
    body = sms_body("😀" * 40, "disk full on db1", "4")
    assert sms_segments(body) == 2
    assert "disk full on db1 - reply '4a'" in body


@pytest.mark.parametrize("code", ["", "4a", "123456789", "-1", " 4"])
def test_sms_body_rejects_a_bad_reply_code(code: str) -> None:
    with pytest.raises(ValueError, match="reply_code"):
        sms_body("svc", "summary", code)


@given(service=st.text(max_size=100), summary=st.text(max_size=2000))
def test_sms_body_always_fits_two_segments(service: str, summary: str) -> None:
    body = sms_body(service, summary, "12345678")
    assert sms_segments(body) <= 2
    assert body.endswith("reply '12345678a' to ack, '12345678r' to resolve")


def _gathers(twiml: str) -> list[ElementTree.Element]:
    return ElementTree.fromstring(twiml).findall("Gather")


def test_voice_twiml_says_the_alert_and_offers_the_menu() -> None:
    twiml = voice_twiml("Payments API", "disk full on db1", ACTION_URL, repeat=3)
    root = ElementTree.fromstring(twiml)
    gathers = root.findall("Gather")
    assert len(gathers) == 3
    for gather in gathers:
        assert gather.attrib["numDigits"] == "1"
        assert gather.attrib["action"] == ACTION_URL
        assert gather.attrib["method"] == "POST"
        assert gather.findall("Say")[-1].text == MENU_PROMPT
    first_words = gathers[0].findall("Say")[0].text or ""
    assert "Payments API" in first_words and "disk full on db1" in first_words
    assert [child.tag for child in root][-1] == "Hangup"


def test_voice_twiml_escapes_and_cleans_hostile_text() -> None:
    twiml = voice_twiml("a<b>&c", 'x\x00y "</Say><Hangup/>', ACTION_URL)
    said = _gathers(twiml)[0].findall("Say")[0].text or ""
    assert 'a<b>&c: x y "</Say><Hangup/>' in said


@pytest.mark.parametrize("repeat", [1, 10])
def test_voice_twiml_stays_under_twilio_limit(repeat: int) -> None:
    long_url = "https://tocsin.example.com/twilio/gather?token=" + "t" * 60
    twiml = voice_twiml("svc", "&<>" * 5000, long_url, repeat=repeat)
    assert len(twiml) <= TWIML_MAX_CHARS
    assert len(_gathers(twiml)) == repeat
    assert "..." in (_gathers(twiml)[0].findall("Say")[0].text or "")


def test_voice_twiml_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gather_action_url"):
        voice_twiml("svc", "summary", "/relative/path")
    with pytest.raises(ValueError, match="repeat"):
        voice_twiml("svc", "summary", ACTION_URL, repeat=0)
    with pytest.raises(ValueError, match="limit"):
        voice_twiml("svc", "summary", "https://x.example/" + "u" * 4000, repeat=1)


def test_gather_response_says_and_hangs_up() -> None:
    root = ElementTree.fromstring(gather_response_twiml("Acknowledged. Goodbye."))
    assert [(child.tag, child.text) for child in root] == [
        ("Say", "Acknowledged. Goodbye."),
        ("Hangup", None),
    ]


def test_gather_response_can_offer_the_menu_again() -> None:
    twiml = gather_response_twiml(
        "Sorry, that is not an option.", retry_action_url=ACTION_URL, repeat=2
    )
    gathers = _gathers(twiml)
    assert len(gathers) == 2
    assert gathers[0].findall("Say")[0].text == "Sorry, that is not an option."
    assert all(g.attrib["action"] == ACTION_URL for g in gathers)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("4a", SmsReply(ReplyAction.ACK, "4")),
        ("4A", SmsReply(ReplyAction.ACK, "4")),
        ("  4  a ", SmsReply(ReplyAction.ACK, "4")),
        ("4 ack", SmsReply(ReplyAction.ACK, "4")),
        ("17 Acknowledge.", SmsReply(ReplyAction.ACK, "17")),
        ("4r", SmsReply(ReplyAction.RESOLVE, "4")),
        ("4 resolve", SmsReply(ReplyAction.RESOLVE, "4")),
        ("ack", SmsReply(ReplyAction.ACK)),
        ("RESOLVE!", SmsReply(ReplyAction.RESOLVE)),
        ("ack 12", SmsReply(ReplyAction.ACK, "12")),
        ("resolve\n12", SmsReply(ReplyAction.RESOLVE, "12")),
        ("STOP", SmsReply(ReplyAction.OPT_OUT)),
        ("stopall", SmsReply(ReplyAction.OPT_OUT)),
        ("Unsubscribe", SmsReply(ReplyAction.OPT_OUT)),
        ("cancel", SmsReply(ReplyAction.OPT_OUT)),
        ("END", SmsReply(ReplyAction.OPT_OUT)),
        ("quit", SmsReply(ReplyAction.OPT_OUT)),
        ("START", SmsReply(ReplyAction.OPT_IN)),
        ("yes", SmsReply(ReplyAction.OPT_IN)),
        ("unstop", SmsReply(ReplyAction.OPT_IN)),
        ("help", SmsReply(ReplyAction.HELP)),
        ("a", None),
        ("r", None),
        ("4", None),
        ("4x", None),
        ("please ack", None),
        ("stop paging me", None),
        ("", None),
        ("123456789a", None),
    ],
)
def test_parse_sms_reply(body: str, expected: SmsReply | None) -> None:
    assert parse_sms_reply(body) == expected


@pytest.mark.parametrize(
    ("digits", "expected"),
    [("4", ReplyAction.ACK), ("6", ReplyAction.RESOLVE), ("5", None), ("", None), ("44", None)],
)
def test_parse_keypress(digits: str, expected: ReplyAction | None) -> None:
    assert parse_keypress(digits) == expected


def test_an_sms_names_its_number_and_keeps_its_link_whatever_the_summary() -> None:
    link = "https://tocsin.example.com/i/18?s=AbCdEfGhIjK"
    body = sms_body("Payments API", "disk full " * 80, "4", number=18, link=link)
    assert body.startswith("tocsin #18: [Payments API] disk full")
    assert body.endswith(f"to resolve {link}")
    assert sms_segments(body) <= 2
    with pytest.raises(ValueError, match="link must be an absolute"):
        sms_body("Payments API", "x", "4", number=18, link="/i/18")
