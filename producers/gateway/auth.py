"""API keys -> tenants (``OCRSTREAM_GATEWAY_API_KEYS``).

The tenant of a request is the one its key maps to, never a field or header the client sets;
the gateway then publishes only to that tenant's ingest topic and reads only its results topic.
"""

from __future__ import annotations

import hashlib

from ocrstream.settings import Settings


class Unauthorized(Exception):
    """No API key, or one the gateway does not know."""


class ApiKeys:
    """Looks a presented key up by its SHA-256 digest (the keys themselves are not kept, and a
    dict lookup of a digest tells a timing attacker nothing about the key).

    Raises (constructor):
        ValueError: no key is configured (a gateway without keys would be open to anyone).
    """

    def __init__(self, s: Settings):
        keys = s.gateway_tenants()
        if not keys:
            raise ValueError("OCRSTREAM_GATEWAY_API_KEYS is empty: set `key=tenant,...` (`key=-` for the default "
                             "tenant)")
        self._tenants = {self._digest(k): t for k, t in keys.items()}
        self.tenants: list[str | None] = list(dict.fromkeys(keys.values()))
        """Every tenant some key acts as (None: the default tenant), in the order first named."""

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.sha256(key.encode()).digest()

    def tenant(self, authorization: str | None, x_api_key: str | None) -> str | None:
        """The tenant of a request from its ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``
        header (None: the default tenant).

        Raises:
            Unauthorized: neither header carries a known key.
        """
        key = x_api_key
        if not key and authorization:
            scheme, _, token = authorization.partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else None
        if not key:
            raise Unauthorized("missing API key (Authorization: Bearer KEY, or X-API-Key: KEY)")
        digest = self._digest(key)
        if digest not in self._tenants:
            raise Unauthorized("unknown API key")
        return self._tenants[digest]
