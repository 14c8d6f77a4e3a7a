"""Which model profile OCRs a document, and whether a shadow copy goes to a second one.

The splitter asks :func:`choose_profile` once per ingest record, with the tenant it learned from
the record's topic (never from the record). The rules come from ``OCRSTREAM_PROFILE_ROUTES``, one
:class:`~ocrstream.settings.ProfileRoute` per tenant (``-``: the default tenant, ``*``: any
tenant without an entry of its own; neither: the default profile only):

1. A document that names a profile (``DocumentRef.profile``) gets it if the route allows it
   (``allowed``, else the profiles of ``split``); otherwise it fails with ``profile_not_allowed``
   (a dead letter and a failed result), before its object is read. The name is a request, not a
   grant: a publisher cannot reach a profile its tenant was not given.
2. Any other document is placed by the **A/B split**: ``u = H("ab", document key)`` in [0, 1)
   against the cumulative normalised weights of ``split``, profiles in name order (so the JSON's
   key order does not matter). ``H`` is the first 8 bytes of SHA-256 as a fraction of 2**64: the
   same document (a replayed ingest record, a re-sent reference with the same id) always lands on
   the same profile, and any set of ids splits in the configured share up to sampling error.
3. **Shadow**: independently of the split (another salt), ``H("shadow", document key) <
   shadow_share`` sends the document also to ``shadow``, unless that is the profile it already
   got. The shadow copy's results go to ``shadow-results`` only (:mod:`topology.shadow`).

The document key (``<tenant>/<document_id>``, :func:`topology.document_key`) is hashed rather
than the bare id so that the same id of two tenants is split independently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ocrstream.profiles import DEFAULT_ROUTE, check_named_profile, route_of
from ocrstream.settings import Settings
from schemas import DocumentRef

__all__ = ["DEFAULT_ROUTE", "Route", "choose_profile", "route_of", "split_profile", "unit_hash"]


@dataclass(frozen=True)
class Route:
    """Where one document goes: ``profile`` OCRs it for its user; ``shadow``, when not None,
    OCRs a copy whose result goes to ``shadow-results`` only."""

    profile: str
    shadow: str | None = None


def unit_hash(salt: str, key: str) -> float:
    """A uniform number in [0, 1) from SHA-256 of ``salt`` and ``key`` (first 8 bytes / 2**64)."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_profile(split: dict[str, float], key: str) -> str:
    """The profile of the A/B ``split`` (profile -> weight) for document key ``key``."""
    total = sum(split.values())
    u = unit_hash("ab", key) * total
    upto = 0.0
    names = [p for p in sorted(split) if split[p] > 0]
    for name in names:
        upto += split[name]
        if u < upto:
            return name
    return names[-1]  # u * total rounded up to the total


def choose_profile(s: Settings, tenant: str | None, ref: DocumentRef, document_key: str) -> Route:
    """The :class:`Route` of one document (see module docstring).

    Args:
        tenant: the tenant of the ingest topic the record came from (None: the default tenant).
        ref: the reference (``ref.profile``: the profile it asks for, or None).
        document_key: the document's pipeline key (:func:`topology.document_key`), what is hashed.

    Raises:
        OcrstreamError: ``profile_not_allowed``: ``ref.profile`` is not one the tenant may name
            (unknown profiles included).
    """
    route = route_of(s, tenant)
    if ref.profile is not None:
        profile = check_named_profile(s, tenant, ref.profile)
    else:
        profile = split_profile(route.split, document_key)
    shadow = None
    if route.shadow is not None and route.shadow != profile and unit_hash("shadow", document_key) < route.shadow_share:
        shadow = route.shadow
    return Route(profile, shadow)
