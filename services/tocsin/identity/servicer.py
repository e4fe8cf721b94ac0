"""IdentityService: signing in, personal tokens, API keys, the audit log (a thin adapter
over identity/store.py and runtime/audit.py).

Guarantee: a password, token or key is never logged, put in an error or in an audit entry;
a token or key is returned once, by the call that issues it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tocsin.identity import domain
from tocsin.identity.store import IdentityStore, api_key_message
from tocsin.runtime.audit import AuditLog
from tocsin.runtime.auth import (
    CredentialKind,
    Role,
    Unauthenticated,
    current_principal,
)
from tocsin.runtime.clock import Clock
from tocsin.runtime.errors import InvalidArgument, NotFound, ResourceExhausted
from tocsin.runtime.paging import page_size
from tocsin.scheduling.store import SchedulingStore
from tocsin.v1 import common_pb2, identity_pb2, identity_pb2_grpc

SERVICE_NAME = "tocsin.v1.IdentityService"
_WRONG = "wrong user or password"


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(
        self, store: IdentityStore, users: SchedulingStore, audit: AuditLog, clock: Clock
    ) -> None:
        self.store = store
        self.users = users
        self.audit = audit
        self.clock = clock

    async def Login(
        self, request: identity_pb2.LoginRequest, context: Any
    ) -> identity_pb2.LoginResponse:
        user_id = request.user_id.strip()
        if not user_id:
            raise InvalidArgument.one("user_id", "must not be empty")
        if domain.locked_out(await self.store.failures(user_id)):
            raise ResourceExhausted(
                f"too many wrong passwords for {user_id!r}: signing in is locked for "
                f"{int(domain.LOCKOUT.total_seconds() // 60)} minutes after the last one"
            )
        stored = await self.store.password(user_id)
        matched = await asyncio.to_thread(domain.verify_password, stored, request.password)
        if not matched:
            await self.store.add_failure(user_id)
            raise Unauthenticated(_WRONG)
        try:
            user = await self.users.get_user(user_id)
        except NotFound:
            raise Unauthenticated(_WRONG) from None
        await self.store.clear_failures(user_id)
        token, expires_ms = await self._session(user_id)
        reply = identity_pb2.LoginResponse(token=token, user_id=user_id, role=user.role)
        reply.expires_at.FromMilliseconds(expires_ms)
        return reply

    async def _session(self, user_id: str) -> tuple[str, int]:
        now = self.clock.now_ms()
        lifetime = int(domain.SESSION_LIFETIME.total_seconds() * 1000)
        token, _ = await self.store.issue(user_id, "session", now, lifetime)
        return token, now + lifetime

    async def Logout(
        self, request: identity_pb2.LogoutRequest, context: Any
    ) -> identity_pb2.LogoutResponse:
        principal = current_principal()
        if principal is not None and principal.kind is CredentialKind.SESSION:
            await self.store.forget(principal.credential_id)
        return identity_pb2.LogoutResponse()

    async def WhoAmI(
        self, request: identity_pb2.WhoAmIRequest, context: Any
    ) -> identity_pb2.WhoAmIResponse:
        principal = current_principal()
        if principal is None:
            raise Unauthenticated("no credential")
        return identity_pb2.WhoAmIResponse(
            user_id=principal.user_id,
            role=principal.role.proto if principal.role else common_pb2.ROLE_UNSPECIFIED,
            credential=principal.kind.value,
            api_key_id=principal.credential_id if principal.kind is CredentialKind.API_KEY else "",
            display=principal.display,
        )

    async def SetPassword(
        self, request: identity_pb2.SetPasswordRequest, context: Any
    ) -> identity_pb2.SetPasswordResponse:
        await self.users.get_user(request.user_id)  # NOT_FOUND names the user
        domain.check_password(request.password)
        hashed = await asyncio.to_thread(domain.hash_password, request.password)
        await self.store.set_password(request.user_id, hashed)
        # The entry says that it changed, never what it is.
        await self.audit.record(
            "password.set", "user", request.user_id, None, {"password": "changed"}
        )
        return identity_pb2.SetPasswordResponse()

    async def IssueToken(
        self, request: identity_pb2.IssueTokenRequest, context: Any
    ) -> identity_pb2.IssueTokenResponse:
        await self.users.get_user(request.user_id)
        token, expires_ms = await self._session(request.user_id)
        reply = identity_pb2.IssueTokenResponse(token=token)
        reply.expires_at.FromMilliseconds(expires_ms)
        return reply

    async def CreateApiKey(
        self, request: identity_pb2.CreateApiKeyRequest, context: Any
    ) -> identity_pb2.CreateApiKeyResponse:
        user = await self.users.get_user(request.user_id)
        cap = ""
        if request.role:
            if request.role not in (
                common_pb2.ROLE_ADMIN,
                common_pb2.ROLE_RESPONDER,
                common_pb2.ROLE_OBSERVER,
            ):
                raise InvalidArgument.one("role", "expected admin, responder or observer")
            cap = Role.from_proto(request.role).value
            if Role(cap).rank > Role.from_proto(user.role).rank:
                raise InvalidArgument.one(
                    "role", f"{cap} is more than {user.id}'s role; a key acts with at most it"
                )
        lifetime_ms = 0
        if request.HasField("expires_in"):
            lifetime_ms = request.expires_in.ToMilliseconds()
            if lifetime_ms <= 0:
                raise InvalidArgument.one("expires_in", "must be above 0")
        now = self.clock.now_ms()
        key, credential_id = await self.store.issue(
            user.id, "api_key", now, lifetime_ms, role=cap, name=request.name.strip()
        )
        stored = await self.store.credential(credential_id)
        message = api_key_message(credential_id, stored)
        await self.audit.record("api_key.create", "api_key", credential_id, None, message)
        return identity_pb2.CreateApiKeyResponse(key=key, api_key=message)

    async def ListApiKeys(
        self, request: identity_pb2.ListApiKeysRequest, context: Any
    ) -> identity_pb2.ListApiKeysResponse:
        return identity_pb2.ListApiKeysResponse(api_keys=await self.store.api_keys(request.user_id))

    async def RevokeApiKey(
        self, request: identity_pb2.RevokeApiKeyRequest, context: Any
    ) -> identity_pb2.RevokeApiKeyResponse:
        if not request.id:
            raise InvalidArgument.one("id", "must not be empty")
        revoked = await self.store.revoke_api_key(request.id)
        await self.audit.record("api_key.revoke", "api_key", request.id, revoked, None)
        return identity_pb2.RevokeApiKeyResponse()

    async def ListAuditEntries(
        self, request: identity_pb2.ListAuditEntriesRequest, context: Any
    ) -> identity_pb2.ListAuditEntriesResponse:
        since = request.since.ToMilliseconds() if request.HasField("since") else 0
        entries, next_id = await self.audit.read(
            since, request.user_id, page_size(request.page_size), request.page_token
        )
        return identity_pb2.ListAuditEntriesResponse(entries=entries, next_page_token=next_id)
