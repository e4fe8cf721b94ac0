"""Typed clients for the tocsin services.

`TocsinClient` (asyncio) holds one channel per service and exposes the generated stubs,
which are fully typed through the committed .pyi files, plus `trigger()`, `notify()`,
`append_timeline()`, `report_page_out()` and `delivery_status()`, which send concurrent
calls together as TriggerBatch, NotifyBatch, AppendTimelineBatch, ReportPageOutBatch and
HandleDeliveryStatusBatch calls (tocsin.client.batcher). Internal services and the CLI use it;
`SyncTocsinClient` offers the same stubs for scripts without an event loop. Without an
explicit token both send what tocsin.client.credentials chooses (TOCSIN_TOKEN, the
`tocsin login` token, TOCSIN_API_TOKEN, or none).
"""

from __future__ import annotations

import os
from types import TracebackType

import grpc

from tocsin.client.batcher import CallBatcher, stub_batcher
from tocsin.client.channel import channel_credentials, create_channel
from tocsin.client.credentials import default_token
from tocsin.client.endpoints import Endpoints, resolve_endpoints
from tocsin.client.targets import grpc_target
from tocsin.client.tls import (
    TlsSettings,
    allow_insecure_tokens,
    check_token_transport,
    tls_from_env,
)
from tocsin.client.trigger_batcher import TriggerBatcher
from tocsin.v1 import (
    escalation_pb2,
    escalation_pb2_grpc,
    history_pb2_grpc,
    identity_pb2_grpc,
    incidents_pb2,
    incidents_pb2_grpc,
    notification_pb2,
    notification_pb2_grpc,
    scheduling_pb2_grpc,
    webhooks_pb2_grpc,
)

SERVICES = ("scheduling", "incidents", "escalation", "notification", "history")

FROM_ENV = "env"
"""`tls=FROM_ENV` (the default): TLS settings from TOCSIN_TLS_* (tocsin.client.tls)."""


def _transport(
    tls: TlsSettings | str | None, allow_insecure: bool | None
) -> tuple[TlsSettings | None, bool]:
    settings = tls_from_env(os.environ) if tls == FROM_ENV else tls
    assert settings is None or isinstance(settings, TlsSettings)
    allow = allow_insecure_tokens(os.environ) if allow_insecure is None else allow_insecure
    return settings, allow


class TocsinClient:
    """Channels to every service. `tls` and `allow_insecure_tokens` default to the
    environment's TOCSIN_TLS_* and TOCSIN_ALLOW_INSECURE_TOKENS; `token` to what
    tocsin.client.credentials chooses (TOCSIN_TOKEN, the `tocsin login` token,
    TOCSIN_API_TOKEN); `via` names the channel ("cli") for the audit log. Raises
    `TlsError`/`InsecureTokenError` before any call."""

    def __init__(
        self,
        endpoints: Endpoints | None = None,
        token: str | None = None,
        via: str | None = None,
        *,
        tls: TlsSettings | str | None = FROM_ENV,
        allow_insecure_tokens: bool | None = None,
    ) -> None:
        self.endpoints = endpoints or resolve_endpoints()
        token = token if token is not None else default_token(self.endpoints.scheduling)
        settings, allow = _transport(tls, allow_insecure_tokens)
        self._channels = {
            name: create_channel(
                getattr(self.endpoints, name),
                token,
                via,
                tls=settings,
                allow_insecure_tokens=allow,
            )
            for name in SERVICES
        }
        self.scheduling = scheduling_pb2_grpc.SchedulingServiceStub(self._channels["scheduling"])
        self.identity = identity_pb2_grpc.IdentityServiceStub(self._channels["scheduling"])
        self.incidents = incidents_pb2_grpc.IncidentServiceStub(self._channels["incidents"])
        self.escalation = escalation_pb2_grpc.EscalationServiceStub(self._channels["escalation"])
        self.notification = notification_pb2_grpc.NotificationServiceStub(
            self._channels["notification"]
        )
        self.history = history_pb2_grpc.HistoryServiceStub(self._channels["history"])
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self._channels["notification"])
        self._triggers = TriggerBatcher(self.incidents)
        self._notifies: CallBatcher[
            notification_pb2.NotifyRequest, notification_pb2.NotifyResponse
        ] = stub_batcher(
            self.notification.NotifyBatch,
            notification_pb2.NotifyBatchRequest,
            self.notification.Notify,
        )
        self._reports: CallBatcher[
            escalation_pb2.ReportPageOutRequest, escalation_pb2.ReportPageOutResponse
        ] = stub_batcher(
            self.escalation.ReportPageOutBatch,
            escalation_pb2.ReportPageOutBatchRequest,
            self.escalation.ReportPageOut,
        )
        self._statuses: CallBatcher[
            notification_pb2.HandleDeliveryStatusRequest,
            notification_pb2.HandleDeliveryStatusResponse,
        ] = stub_batcher(
            self.notification.HandleDeliveryStatusBatch,
            notification_pb2.HandleDeliveryStatusBatchRequest,
            self.notification.HandleDeliveryStatus,
        )
        self._timeline: CallBatcher[
            incidents_pb2.AppendTimelineRequest, incidents_pb2.AppendTimelineResponse
        ] = stub_batcher(
            self.incidents.AppendTimelineBatch,
            incidents_pb2.AppendTimelineBatchRequest,
            self.incidents.AppendTimeline,
        )

    async def trigger(
        self,
        request: incidents_pb2.TriggerRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, as stubs take it
    ) -> incidents_pb2.TriggerResponse:
        """IncidentService.Trigger, with concurrent calls sharing TriggerBatch calls (see
        trigger_batcher): the way to send many alerts. Raises what Trigger would raise."""
        return await self._triggers.trigger(request, timeout)

    async def notify(
        self,
        request: notification_pb2.NotifyRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, as stubs take it
    ) -> notification_pb2.NotifyResponse:
        """NotificationService.Notify, with concurrent calls sharing NotifyBatch calls (a
        lone call goes at once); waits for a notification service that is starting,
        within `timeout`. Raises what Notify would raise."""
        return await self._notifies.call(request, timeout)

    async def append_timeline(
        self,
        request: incidents_pb2.AppendTimelineRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, as stubs take it
    ) -> incidents_pb2.AppendTimelineResponse:
        """IncidentService.AppendTimeline, with concurrent calls sharing
        AppendTimelineBatch calls, as `notify`. Raises what AppendTimeline would raise."""
        return await self._timeline.call(request, timeout)

    async def report_page_out(
        self,
        request: escalation_pb2.ReportPageOutRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, as stubs take it
    ) -> escalation_pb2.ReportPageOutResponse:
        """EscalationService.ReportPageOut, with concurrent calls sharing
        ReportPageOutBatch calls, as `notify`. Raises what ReportPageOut would raise."""
        return await self._reports.call(request, timeout)

    async def delivery_status(
        self,
        request: notification_pb2.HandleDeliveryStatusRequest,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, as stubs take it
    ) -> notification_pb2.HandleDeliveryStatusResponse:
        """NotificationService.HandleDeliveryStatus, with concurrent calls sharing
        HandleDeliveryStatusBatch calls, as `notify`. Raises what the call would raise."""
        return await self._statuses.call(request, timeout)

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel to one service ("scheduling", "incidents", ...), e.g. for health checks."""
        return self._channels[service]

    async def close(self) -> None:
        await self._triggers.close()
        await self._notifies.close()
        await self._timeline.close()
        await self._reports.close()
        await self._statuses.close()
        for channel in self._channels.values():
            await channel.close()

    async def __aenter__(self) -> TocsinClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class SyncTocsinClient:
    """Blocking stubs over ordinary (non-asyncio) channels."""

    def __init__(
        self,
        endpoints: Endpoints | None = None,
        token: str | None = None,
        *,
        tls: TlsSettings | str | None = FROM_ENV,
        allow_insecure_tokens: bool | None = None,
    ) -> None:
        self.endpoints = endpoints or resolve_endpoints()
        token = token if token is not None else default_token(self.endpoints.scheduling)
        metadata_plugin = _TokenPlugin(token) if token else None
        settings, allow = _transport(tls, allow_insecure_tokens)

        def channel(target: str) -> grpc.Channel:
            if token:
                check_token_transport(target, tls=settings is not None, allow_insecure=allow)
            ch = (
                grpc.secure_channel(grpc_target(target), channel_credentials(settings))
                if settings is not None
                else grpc.insecure_channel(grpc_target(target))
            )
            return grpc.intercept_channel(ch, metadata_plugin) if metadata_plugin else ch

        self._channels = [channel(getattr(self.endpoints, n)) for n in SERVICES]
        self.scheduling = scheduling_pb2_grpc.SchedulingServiceStub(self._channels[0])
        self.identity = identity_pb2_grpc.IdentityServiceStub(self._channels[0])
        self.incidents = incidents_pb2_grpc.IncidentServiceStub(self._channels[1])
        self.escalation = escalation_pb2_grpc.EscalationServiceStub(self._channels[2])
        self.notification = notification_pb2_grpc.NotificationServiceStub(self._channels[3])
        self.history = history_pb2_grpc.HistoryServiceStub(self._channels[4])
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(self._channels[3])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


class _TokenPlugin(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self._pair = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._pair],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression
