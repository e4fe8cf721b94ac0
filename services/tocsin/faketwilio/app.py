"""The fake Twilio's HTTP face: Twilio's 2010-04-01 create endpoints plus `/_fake/` controls.

The control API lets another process (a load generator, `tocsin fake-twilio`) drive the
fake: inspect what arrived, inject failures, choose outcomes, and make a user reply by
SMS or press a key in a call. It has no authentication: bind it to loopback.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tocsin.faketwilio.fake import FakeTwilio, Kind

_ACCOUNT = "/2010-04-01/Accounts/{account_sid}"


class _BadControl(Exception):
    pass


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        payload = await request.json()
    except ValueError:
        raise _BadControl("request body must be a JSON object") from None
    if not isinstance(payload, dict):
        raise _BadControl("request body must be a JSON object")
    return payload


def _field(payload: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    if name not in payload:
        if default is ...:
            raise _BadControl(f"field {name!r} is required")
        return default
    value = payload[name]
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise _BadControl(f"field {name!r} must be a {kind.__name__}")
    return value


def create_app(fake: FakeTwilio) -> Starlette:
    async def create(request: Request, kind: Kind) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
        record, payload = fake.handle_create(
            kind, request.path_params["account_sid"], request.headers.get("authorization"), form
        )

        async def after_response() -> None:
            fake.schedule_callbacks(record)

        headers = (
            {"Retry-After": str(record.retry_after)} if record.retry_after is not None else None
        )
        return JSONResponse(
            payload,
            status_code=record.http_status,
            headers=headers,
            background=BackgroundTask(after_response),
        )

    async def messages(request: Request) -> Response:
        return await create(request, "sms")

    async def calls(request: Request) -> Response:
        return await create(request, "call")

    async def list_requests(request: Request) -> Response:
        kind = request.query_params.get("kind")
        records = fake.requests if kind is None else [r for r in fake.requests if r.kind == kind]
        if request.query_params.get("accepted") in ("1", "true"):
            records = [r for r in records if r.accepted]
        return JSONResponse([r.to_json() for r in records])

    async def list_webhooks(request: Request) -> Response:
        return JSONResponse([w.to_json() for w in fake.webhooks])

    async def stats(request: Request) -> Response:
        return JSONResponse(fake.stats())

    async def reset(request: Request) -> Response:
        fake.reset()
        return JSONResponse({"ok": True})

    async def drain(request: Request) -> Response:
        await fake.drain()
        return JSONResponse({"ok": True})

    async def fail(payload: dict[str, Any]) -> dict[str, Any]:
        kind = _field(payload, "kind", str, None)
        if kind not in (None, "sms", "call"):
            raise _BadControl("field 'kind' must be 'sms' or 'call'")
        fake.fail_next(
            _field(payload, "count", int, 1),
            status=_field(payload, "status", int, 429),
            code=_field(payload, "code", int, 20429),
            kind=kind,
            retry_after=_field(payload, "retry_after", int, None),
            to=_field(payload, "to", str, None),
        )
        return {"ok": True}

    async def outcome(payload: dict[str, Any]) -> dict[str, Any]:
        kind = _field(payload, "kind", str)
        number, result = _field(payload, "number", str), _field(payload, "outcome", str)
        if kind == "sms":
            fake.set_sms_outcome(number, result)
        elif kind == "call":
            fake.set_call_outcome(number, result)
        else:
            raise _BadControl("field 'kind' must be 'sms' or 'call'")
        return {"ok": True}

    async def reply(payload: dict[str, Any]) -> dict[str, Any]:
        answer = await fake.reply_sms(
            from_=_field(payload, "from", str),
            to=_field(payload, "to", str),
            body=_field(payload, "body", str),
            webhook_url=_field(payload, "webhook_url", str),
        )
        return {"status_code": answer.status_code, "body": answer.body}

    async def press(payload: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await fake.press_digits(
                _field(payload, "call_sid", str),
                _field(payload, "digits", str),
                _field(payload, "action_url", str),
            )
        except KeyError as exc:
            raise _BadControl(str(exc.args[0])) from None
        return {"status_code": answer.status_code, "body": answer.body}

    def control(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(await handler(await _json_object(request)))
            except (_BadControl, ValueError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)

        return endpoint

    return Starlette(
        routes=[
            Route(f"{_ACCOUNT}/Messages.json", messages, methods=["POST"]),
            Route(f"{_ACCOUNT}/Calls.json", calls, methods=["POST"]),
            Route("/_fake/requests", list_requests, methods=["GET"]),
            Route("/_fake/webhooks", list_webhooks, methods=["GET"]),
            Route("/_fake/stats", stats, methods=["GET"]),
            Route("/_fake/reset", reset, methods=["POST"]),
            Route("/_fake/drain", drain, methods=["POST"]),
            Route("/_fake/fail", control(fail), methods=["POST"]),
            Route("/_fake/outcome", control(outcome), methods=["POST"]),
            Route("/_fake/reply", control(reply), methods=["POST"]),
            Route("/_fake/press", control(press), methods=["POST"]),
        ]
    )
