"""Console page: Admin (`/admin`), for admins only (others get 403 and no nav link).

    GET  /admin                      services with their integration keys and the URLs to
                                     paste (Events API v2, Alertmanager; from
                                     TOCSIN_PUBLIC_URL), escalation policies, users and
                                     roles, the audit log (newest first)
    POST /admin/users/{id}/role      change a user's role (UpdateUser, audited as the admin)

Every read and change is the services' own RPC called as the viewer: the services refuse
a non-admin anyway (ListAuditEntries and UpdateUser are ADMIN in runtime/authz.py), the
console only spares them the page.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tocsin.client.configfile import ROLES
from tocsin.console.web import (
    Viewer,
    all_items,
    console_of,
    enum_label,
    page,
    refused,
    render,
    see_other,
)
from tocsin.v1 import common_pb2, escalation_pb2, identity_pb2, incidents_pb2, scheduling_pb2

AUDIT_SHOWN = 50


def _not_admin(request: Request) -> Response:
    return refused(request, "The Admin pages are for admins.", 403)


def _target(target: escalation_pb2.EscalationTarget) -> str:
    if target.WhichOneof("target") == "schedule_id":
        return f"schedule {target.schedule_id}"
    return f"user {target.user_id}"


@page
async def admin_page(request: Request, viewer: Viewer) -> Response:
    if not viewer.is_admin:
        return _not_admin(request)
    client = viewer.client
    base = console_of(request).config.public_url.rstrip("/")
    services = await all_items(
        client.incidents.ListServices, incidents_pb2.ListServicesRequest, "services"
    )
    policies = await all_items(
        client.escalation.ListPolicies, escalation_pb2.ListPoliciesRequest, "policies"
    )
    users = await all_items(client.scheduling.ListUsers, scheduling_pb2.ListUsersRequest, "users")
    audit = await client.identity.ListAuditEntries(
        identity_pb2.ListAuditEntriesRequest(page_size=AUDIT_SHOWN), timeout=10
    )
    return render(
        request,
        "admin.html",
        {
            "services": [
                {
                    "id": s.id,
                    "name": s.name,
                    "key": s.integration_key,
                    "policy": s.escalation_policy_id,
                    "events_api": f"{base}/v2/enqueue",
                    "alertmanager": f"{base}/v1/alertmanager/{s.integration_key}",
                }
                for s in services
            ],
            "policies": [
                {
                    "id": p.id,
                    "name": p.name,
                    "repeat": p.repeat,
                    "levels": [
                        {
                            "targets": ", ".join(_target(t) for t in level.targets),
                            "delay": level.delay.seconds // 60,
                        }
                        for level in p.levels
                    ],
                }
                for p in policies
            ],
            "users": [
                {
                    "id": u.id,
                    "name": u.name,
                    "email": u.email,
                    "role": enum_label(u.role, common_pb2.Role, "ROLE_") if u.role else "responder",
                }
                for u in users
            ],
            "roles": list(ROLES),
            "audit": audit.entries,
        },
        active="admin",
    )


@page
async def change_role(request: Request, viewer: Viewer) -> Response:
    if not viewer.is_admin:
        return _not_admin(request)
    user_id = request.path_params["user_id"]
    form = await request.form()
    role = form.get("role")
    if role not in ROLES:
        return refused(request, f"role: expected one of {', '.join(ROLES)} (got {role!r})")
    reply = await viewer.client.scheduling.GetUser(
        scheduling_pb2.GetUserRequest(id=user_id), timeout=10
    )
    user = reply.user
    user.role = ROLES[str(role)]
    await viewer.client.scheduling.UpdateUser(
        scheduling_pb2.UpdateUserRequest(user=user), timeout=10
    )
    return see_other(request, "/admin#users", f"{user_id} is now {role}")


routes: list[BaseRoute] = [
    Route("/admin", admin_page, methods=["GET"]),
    Route("/admin/users/{user_id}/role", change_role, methods=["POST"]),
]
