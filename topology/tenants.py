"""Tenants: several publishers sharing one deployment, kept apart the Kafka way.

A tenant is known from *where a record came from*, never from a field its publisher fills
in: tenant ``acme`` publishes to its own ingest topic ``<prefix>tenant.acme.ingest`` (its
principal may write only that one, see :mod:`topology.acls`) and reads its results from
``<prefix>tenant.acme.document-results``. One results topic per tenant, not one shared topic
with ACL'd key prefixes, because a Kafka ACL grants a whole topic: it cannot hide the records
of other keys from a reader. One *prefixed* ACL per tenant (``<prefix>tenant.acme.``) covers
exactly its topics. The internal topics (``pages``, ``page-results``, state) stay shared and
are open to the stage principals only; the records on them carry the tenant the splitter
learned from the ingest topic.

Inside the pipeline a document is identified by its *document key*: ``document_id`` for the
default tenant (the plain ``ingest`` topic: single-tenant deployments and the drop folder),
``<tenant>/<document_id>`` for a tenant. ``/`` cannot occur in a ``document_id`` (see
``schemas.DocumentRef``), so two tenants submitting the same id never share a key, an
assembler state entry or a done marker.
"""

from __future__ import annotations

import re

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
"""Tenant names: lower-case letters, digits and ``-`` (valid in topic and principal names;
no ``.``, which separates the topic name's parts)."""

TENANT_TOPICS = ("ingest", "document-results")
"""The logical topics each tenant has its own copy of."""


def tenant_topic(tenant: str | None, name: str) -> str:
    """Logical topic ``name`` (``ingest`` or ``document-results``) of ``tenant``
    (``tenant.<tenant>.<name>``; ``name`` itself for the default tenant, None).

    Raises:
        ValueError: ``name`` is not a per-tenant topic, or ``tenant`` is not a valid name.
    """
    if name not in TENANT_TOPICS:
        raise ValueError(f"{name!r} is not a per-tenant topic ({', '.join(TENANT_TOPICS)})")
    if tenant is None:
        return name
    check_tenant_name(tenant)
    return f"tenant.{tenant}.{name}"


def tenant_of_topic(logical: str) -> str | None:
    """The tenant whose topic ``logical`` (a topic name without the prefix) is: ``acme`` for
    ``tenant.acme.ingest``, None for the default tenant's ``ingest``."""
    parts = logical.split(".")
    if len(parts) == 3 and parts[0] == "tenant" and parts[2] in TENANT_TOPICS:
        return parts[1]
    return None


def check_tenant_name(tenant: str) -> str:
    """``tenant``, unchanged.

    Raises:
        ValueError: not matching :data:`TENANT_NAME`.
    """
    if not TENANT_NAME.match(tenant):
        raise ValueError(f"tenant name {tenant!r}: use lower-case letters, digits and '-' (at most 63)")
    return tenant


def document_key(tenant: str | None, document_id: str) -> str:
    """The pipeline-wide key of a document: ``document_id``, or ``<tenant>/<document_id>``."""
    return document_id if tenant is None else f"{tenant}/{document_id}"


def split_document_key(key: str) -> tuple[str | None, str]:
    """``(tenant or None, document_id)`` of a :func:`document_key`."""
    tenant, _, document_id = key.rpartition("/")
    return (tenant or None), document_id


def follower_group(tenant: str | None) -> str:
    """The consumer-group family (without the group prefix) of result followers of ``tenant``:
    ``follower`` or ``tenant.<tenant>.follower``; each follower adds ``-<random>``. They read by
    assignment and commit nothing, but librdkafka still looks the group up, so the principal
    needs READ on it: per tenant, so one tenant's grant names no other tenant's groups."""
    return "follower" if tenant is None else f"tenant.{check_tenant_name(tenant)}.follower"
