"""Shadow traffic: a sampled share of documents OCR'd a second time by another model profile.

A shadow copy is the same document (same object, pages, tenant) sent to a second profile's page
topic next to its real copy (``OCRSTREAM_PROFILE_ROUTES``, ``consumers.routing``). Its results
are for comparison only (``ocrstream compare``): they go to the ``shadow-results`` topic and
never to a ``document-results`` topic, so no user, sink or gateway ever reads them.

Inside the pipeline the shadow copy has a *document key* of its own, :func:`shadow_key` of the
real one (``<document key>~shadow``), on its page tasks and page results and in the assembler's
state and done markers, so the two copies never meet: a page result of one never completes,
replaces or closes the other, and a replay of one never publishes the other. ``~`` occurs in
neither a ``document_id`` (``schemas.DocumentRef``) nor a tenant name, so the suffix cannot be
forged by a publisher. On ``shadow-results`` the key is the real document key
(``<tenant>/<document_id>`` or ``document_id``), the one ``compare`` pairs by.
"""

from __future__ import annotations

SHADOW_RESULTS = "shadow-results"
"""Logical name of the topic of shadow copies' document results (``DocumentResult`` with
``shadow: true``), key = the real document key."""

SHADOW_SUFFIX = "~shadow"


def shadow_key(doc_key: str) -> str:
    """The pipeline key of the shadow copy of the document keyed ``doc_key``."""
    return doc_key + SHADOW_SUFFIX


def split_shadow_key(key: str) -> tuple[str, bool]:
    """``(the real document key, whether key is a shadow copy's)``."""
    if key.endswith(SHADOW_SUFFIX):
        return key[: -len(SHADOW_SUFFIX)], True
    return key, False
