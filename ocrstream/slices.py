"""Per-page slices of large PDFs: each worker downloads its page, not the whole document.

Without slices every worker that gets a page of a document downloads and parses the whole
object (its source cache), so a 12-page scan spread over 8 workers is read from S3 nine times
(the splitter and 8 workers) and a 200 MB scan costs each of them 200 MB of transfer and memory.
For a PDF of at least ``OCRSTREAM_SLICE_MIN_BYTES`` the splitter, which reads the document anyway,
writes each page once as a one-page PDF (PyMuPDF ``insert_pdf``: the page with the resources it
uses) under ``OCRSTREAM_SLICE_PREFIX``::

    <slice_prefix><document key>/<page_number>.pdf        (document key: see topology.tenants)

and the page task names it in ``slice``; the worker renders page 1 of the slice. Workers that
do not know the field still render the page from ``source`` (compatible change). Slices are the
service's own objects: a page task's slice must be exactly its own document's key under the
service's bucket and prefix (:func:`check_slice`), so a forged task cannot point a worker at
another document's or tenant's slice. ``ocrstream delete`` removes them with the document;
expire the prefix with a lifecycle rule like the uploads (README "Security").
"""

from __future__ import annotations

from .errors import OcrstreamError, ReasonCode
from .settings import Settings


def slice_folder(s: Settings, tenant: str | None, document_id: str) -> str:
    """Key prefix (ending in ``/``) of a document's slices in ``OCRSTREAM_BUCKET``."""
    from topology import document_key

    return f"{s.slice_prefix}{document_key(tenant, document_id)}/"


def slice_key(s: Settings, tenant: str | None, document_id: str, page_number: int) -> str:
    """Key of page ``page_number``'s slice (1-based)."""
    return f"{slice_folder(s, tenant, document_id)}{page_number}.pdf"


def wants_slices(s: Settings, kind: str, size: int, page_count: int) -> bool:
    """True for a PDF of at least ``OCRSTREAM_SLICE_MIN_BYTES`` with more than one page
    (0 turns slicing off)."""
    return kind == "pdf" and page_count > 1 and s.slice_min_bytes > 0 and size >= s.slice_min_bytes


def page_pdf(doc, page_number: int) -> bytes:
    """Page ``page_number`` (1-based) of the open ``pymupdf.Document`` ``doc`` as a one-page PDF:
    the page and the objects it uses, streams copied as they are. No ``deflate``: re-compressing a
    scan's image streams took 4.7 s a page (26 MB PNG pages) against 0.1 s for the plain copy."""
    import pymupdf

    out = pymupdf.open()
    try:
        out.insert_pdf(doc, from_page=page_number - 1, to_page=page_number - 1)
        return out.tobytes(garbage=2)
    finally:
        out.close()


def check_slice(s: Settings, tenant: str | None, document_id: str, page_number: int, bucket: str, key: str) -> None:
    """Refuse a slice that is not this page's own.

    Raises:
        OcrstreamError: ``forbidden_source``.
    """
    want = slice_key(s, tenant, document_id, page_number)
    if bucket != s.bucket or key != want:
        raise OcrstreamError(ReasonCode.FORBIDDEN_SOURCE,
                             f"slice s3://{bucket}/{key} is not this page's (s3://{s.bucket}/{want})")
