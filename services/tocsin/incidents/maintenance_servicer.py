"""IncidentService RPCs of maintenance windows (urgency.proto; see maintenance.py). A
mixin of IncidentServicer, like the noise-control RPCs; every change is audited."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tocsin.incidents import validation
from tocsin.incidents.validation import check
from tocsin.runtime.errors import FieldViolation, NotFound
from tocsin.v1 import urgency_pb2

if TYPE_CHECKING:
    from tocsin.incidents.maintenance import Maintenance
    from tocsin.incidents.service_store import ServiceStore


class MaintenanceRpcs:
    maintenance: Maintenance
    services: ServiceStore

    async def _audit_window(self, action: str, window_id: str, before: Any, after: Any) -> None:
        audit = getattr(self, "audit", None)
        if audit is not None:
            await audit.record(action, "maintenance window", window_id, before, after)

    async def _services_exist(self, window: urgency_pb2.MaintenanceWindow) -> None:
        missing = [
            FieldViolation(f"window.service_ids[{i}]", f"service {service_id!r} does not exist")
            for i, service_id in enumerate(window.service_ids)
            if not validation.service_id_violations("s", service_id)
            and await self.services.find(service_id=service_id) is None
        ]
        if missing:
            raise NotFound(missing[0].description)

    async def CreateMaintenanceWindow(
        self, request: urgency_pb2.CreateMaintenanceWindowRequest, context: Any
    ) -> urgency_pb2.CreateMaintenanceWindowResponse:
        if not request.validate_only:  # the services may be created in the same apply
            await self._services_exist(request.window)
        window = await self.maintenance.create(request.window, validate_only=request.validate_only)
        if not request.validate_only:
            await self._audit_window("maintenance.create", window.id, None, window)
        return urgency_pb2.CreateMaintenanceWindowResponse(window=window)

    async def UpdateMaintenanceWindow(
        self, request: urgency_pb2.UpdateMaintenanceWindowRequest, context: Any
    ) -> urgency_pb2.UpdateMaintenanceWindowResponse:
        before = await self.maintenance.get(request.window.id)
        if not request.validate_only:
            await self._services_exist(request.window)
        window = await self.maintenance.update(request.window, validate_only=request.validate_only)
        if not request.validate_only:
            await self._audit_window("maintenance.update", window.id, before, window)
        return urgency_pb2.UpdateMaintenanceWindowResponse(window=window)

    async def ListMaintenanceWindows(
        self, request: urgency_pb2.ListMaintenanceWindowsRequest, context: Any
    ) -> urgency_pb2.ListMaintenanceWindowsResponse:
        if request.service_id:
            check(validation.service_id_violations("service_id", request.service_id))
        windows = await self.maintenance.list(request.service_id, request.include_past)
        return urgency_pb2.ListMaintenanceWindowsResponse(windows=windows)

    async def EndMaintenanceWindow(
        self, request: urgency_pb2.EndMaintenanceWindowRequest, context: Any
    ) -> urgency_pb2.EndMaintenanceWindowResponse:
        before = await self.maintenance.get(request.id)
        window, changed = await self.maintenance.end(request.id)
        if changed:
            await self._audit_window("maintenance.end", window.id, before, window)
        return urgency_pb2.EndMaintenanceWindowResponse(window=window, changed=changed)

    async def DeleteMaintenanceWindow(
        self, request: urgency_pb2.DeleteMaintenanceWindowRequest, context: Any
    ) -> urgency_pb2.DeleteMaintenanceWindowResponse:
        before = await self.maintenance.delete(request.id)
        await self._audit_window("maintenance.delete", request.id, before, None)
        return urgency_pb2.DeleteMaintenanceWindowResponse()
