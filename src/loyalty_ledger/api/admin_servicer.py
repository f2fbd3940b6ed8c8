"""AdminService: API keys. Validate, translate, call the key store."""

from __future__ import annotations

from typing import TypeAlias

import grpc
from loyalty.v1 import admin_pb2, admin_pb2_grpc

from loyalty_ledger.api import limits
from loyalty_ledger.api.auth import KeyCache
from loyalty_ledger.api.convert import timestamp
from loyalty_ledger.api.errors import rpc_errors
from loyalty_ledger.api.mutate import mutate
from loyalty_ledger.api.validation import Checks
from loyalty_ledger.ledger import api_keys
from loyalty_ledger.ledger.api_keys import ApiKeyRecord, Role
from loyalty_ledger.ledger.engine import Tx
from loyalty_ledger.ledger.paging import page_size
from loyalty_ledger.ledger.service import Ledger

Ctx: TypeAlias = grpc.aio.ServicerContext  # type: ignore[type-arg]

ROLES = {
    admin_pb2.API_KEY_ROLE_ADMIN: Role.ADMIN,
    admin_pb2.API_KEY_ROLE_MERCHANT: Role.MERCHANT,
    admin_pb2.API_KEY_ROLE_SUBSCRIBER: Role.SUBSCRIBER,
    admin_pb2.API_KEY_ROLE_READER: Role.READER,
}
_ROLES_TO_PROTO = {v: k for k, v in ROLES.items()}
SUBSCRIBER_SCHEMES_MAX = 100


def key_to_proto(key: ApiKeyRecord) -> admin_pb2.ApiKey:
    out = admin_pb2.ApiKey(
        key_id=key.id,
        name=key.name,
        role=_ROLES_TO_PROTO[key.role],
        scheme_ids=key.scheme_ids,
        merchant_id=key.merchant_id,
        create_time=timestamp(key.created_at_us),
    )
    if key.revoked_at_us is not None:
        out.revoke_time.CopyFrom(timestamp(key.revoked_at_us))
    return out


def key_spec(checks: Checks, key: admin_pb2.ApiKey) -> tuple[Role | None, list[str]]:
    """Validate a key to create: its role and scheme ids."""
    checks.text("key.name", key.name, max_chars=limits.NAME_CHARS_MAX, required=True)
    role = ROLES.get(key.role)
    if role is None:
        checks.fail("key.role", "ADMIN, MERCHANT, SUBSCRIBER or READER is required")
    schemes = list(key.scheme_ids)
    checks.ids("key.scheme_ids", schemes[:SUBSCRIBER_SCHEMES_MAX])
    if len(schemes) > SUBSCRIBER_SCHEMES_MAX:
        checks.fail("key.scheme_ids", f"at most {SUBSCRIBER_SCHEMES_MAX}")
    if role is Role.MERCHANT:
        if len(schemes) != 1:
            checks.fail("key.scheme_ids", "a MERCHANT key names exactly one scheme")
        checks.resource_id("key.merchant_id", key.merchant_id)
    else:
        if key.merchant_id:
            checks.fail("key.merchant_id", "only a MERCHANT key names a merchant")
        if schemes and role is not Role.SUBSCRIBER:
            checks.fail("key.scheme_ids", "only MERCHANT and SUBSCRIBER keys name schemes")
    return role, sorted(set(schemes))


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, ledger: Ledger, keys: KeyCache) -> None:
        self.ledger = ledger
        self.keys = keys

    @rpc_errors
    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Ctx
    ) -> admin_pb2.CreateApiKeyResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        role, schemes = key_spec(checks, request.key)
        checks.done()
        assert role is not None
        shown: list[str] = []

        async def op(tx: Tx) -> admin_pb2.CreateApiKeyResponse:
            for scheme_id in schemes:
                await tx.get_scheme(scheme_id)
            key, secret = await api_keys.create_key(
                tx.conn, request.key.name, role, schemes, request.key.merchant_id, tx.now_us
            )
            shown.append(secret)
            # The stored response (for replays) never holds the secret.
            return admin_pb2.CreateApiKeyResponse(key=key_to_proto(key))

        response = await mutate(
            self.ledger, "CreateApiKey", request, admin_pb2.CreateApiKeyResponse, op
        )
        if shown:
            response.secret = shown[-1]
        return response

    @rpc_errors
    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Ctx
    ) -> admin_pb2.ListApiKeysResponse:
        size = page_size(request.page_size)
        page = await self.ledger.read(
            lambda r: api_keys.list_keys(r.conn, size, request.page_token)
        )
        return admin_pb2.ListApiKeysResponse(
            keys=[key_to_proto(k) for k in page.items], next_page_token=page.next_token
        )

    @rpc_errors
    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: Ctx
    ) -> admin_pb2.RevokeApiKeyResponse:
        checks = Checks()
        checks.request_id(request.request_id)
        checks.resource_id("key_id", request.key_id)
        checks.done()

        async def op(tx: Tx) -> admin_pb2.RevokeApiKeyResponse:
            key = await api_keys.revoke(tx.conn, request.key_id, tx.now_us)
            return admin_pb2.RevokeApiKeyResponse(key=key_to_proto(key))

        response = await mutate(
            self.ledger, "RevokeApiKey", request, admin_pb2.RevokeApiKeyResponse, op
        )
        self.keys.clear()
        return response
