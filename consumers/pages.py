"""Turning a PageTask into pixels: download (cached per document) and render/decode.

Several pages of one document usually reach the same worker close together,
so the downloaded object (and, for PDFs, the parsed document) is kept in a
small LRU cache bounded in bytes.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ocrstream.documents import decode_image_page, open_pdf, render_pdf_page
from ocrstream.engine.base import PageOcr
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.textlayer import read_text_layer
from ocrstream.settings import Settings
from ocrstream import metrics as m
from ocrstream.slices import check_slice
from ocrstream.sources import check_source
from ocrstream.storage import ObjectStore
from schemas import PageTask

from ocrstream.streaming import retry_transient

# MuPDF is not thread-safe (PyMuPDF docs, "Multiprocessing/Multithreading"): one render at a time.
_MUPDF_LOCK = threading.Lock()


class _Entry:
    """One cached object: its bytes, the open PDF (or None), and how many callers use it."""

    __slots__ = ("data", "doc", "users", "evicted")

    def __init__(self, data: bytes, doc: object) -> None:
        self.data = data
        self.doc = doc
        self.users = 0  # callers between acquire() and release(); get() callers count forever
        self.evicted = False


class SourceCache:
    """LRU of downloaded objects (and open PDFs), at most ``max_bytes`` of object data.

    An evicted PDF is closed only once nobody uses it any more: a page of it may be
    rendering in another prepare thread at that moment, and closing the document
    under it would fail a valid page as ``corrupt_document``. :meth:`lease` (what
    :func:`prepare_page` uses) counts its users and closes an evicted document when
    the last one leaves; a document handed out by :meth:`get` is never closed by the
    cache, it is freed when its last reference goes. So the bound is on cached data:
    documents still in use after eviction are over it until their pages are done.
    """

    def __init__(self, store: ObjectStore, s: Settings, max_bytes: int = 256 * 1024 * 1024):
        self.store = store
        self.s = s
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, _Entry] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}

    def get(self, task: PageTask, stop: threading.Event | None = None) -> tuple[bytes, object]:
        """``(object bytes, open pymupdf.Document or None)`` for the task's object.

        The document stays open for as long as the caller holds it (the cache does not
        close a document handed out here); prefer :meth:`lease`, which releases it.

        Raises:
            OcrstreamError: ``invalid_bucket``, ``invalid_key``, ``forbidden_source``, ``object_not_found``,
                ``object_changed``, ``object_too_large``, ``storage_error`` (after retries),
                ``corrupt_document``, ``encrypted_document``.
        """
        entry = self._acquire(task, stop)
        return entry.data, entry.doc

    @contextmanager
    def lease(self, task: PageTask, stop: threading.Event | None = None) -> Iterator[tuple[bytes, object]]:
        """Like :meth:`get`, for the ``with`` block only: on leaving it, a document that was
        evicted meanwhile is closed if no other lease holds it.

        Raises:
            OcrstreamError: see :meth:`get`.
        """
        entry = self._acquire(task, stop)
        try:
            yield entry.data, entry.doc
        finally:
            self._release(entry)

    def _acquire(self, task: PageTask, stop: threading.Event | None) -> _Entry:
        # Checked on every page, not only on a download: a cached object must not reach a page
        # task (or a tenant) that may not read it. The tenant is part of the key, so two tenants
        # never share an entry even for the same object.
        obj_key = check_source(self.s, task.source.bucket, task.source.key, task.tenant)  # no more trusted than ingest
        src = task.source
        if task.slice is not None:  # a large document's page, cut out by the splitter: only this page is read
            src = task.slice
            check_slice(self.s, task.tenant, task.document_id, task.page_number, src.bucket, src.key)
            obj_key = src.key
        key = (task.tenant, src.bucket, src.key, src.etag, src.version_id)
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:  # one download per object even when its pages arrive together
            with self._lock:
                entry = self._items.get(key)
                if entry is not None:
                    self._items.move_to_end(key)
                    entry.users += 1
                    return entry
            try:
                data = retry_transient(lambda: self.store.get_bytes(src.bucket, obj_key, self.s.max_object_bytes,
                                                                    src.version_id, etag=src.etag), stop=stop)
                m.SOURCE_BYTES.labels("slice" if task.slice is not None else "document").inc(len(data))
                doc = None
                if task.kind == "pdf":
                    with _MUPDF_LOCK:
                        doc = open_pdf(data)
            except BaseException:
                with self._lock:
                    if self._key_locks.get(key) is lock:
                        del self._key_locks[key]
                raise
            entry = _Entry(data, doc)
            entry.users = 1
            to_close = []
            with self._lock:
                # Still under the key's lock: a caller that finds no lock in _key_locks from
                # here on finds the entry in _items.
                if self._key_locks.get(key) is lock:
                    del self._key_locks[key]
                previous = self._items.pop(key, None)
                if previous is not None:  # not expected (the key lock serialises), but keep the size right
                    self._size -= len(previous.data)
                    previous.evicted = True
                    if previous.doc is not None and previous.users == 0:
                        to_close.append(previous.doc)
                self._items[key] = entry
                self._size += len(data)
                while self._size > self.max_bytes and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._size -= len(old.data)
                    old.evicted = True
                    if old.doc is not None and old.users == 0:
                        to_close.append(old.doc)
            self._close(to_close)
            return entry

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            close = entry.evicted and entry.users == 0 and entry.doc is not None
        if close:
            self._close([entry.doc])

    @staticmethod
    def _close(docs: list) -> None:
        for doc in docs:
            with _MUPDF_LOCK:
                doc.close()


@dataclass
class Prepared:
    """A page ready for the engine (``image``: ``HxWx3 uint8 BGR``), or already read from its text
    layer (``text_layer``, no image); ``shape`` is ``(height, width)`` pixels either way."""

    image: np.ndarray | None
    shape: tuple[int, int]
    timings: dict[str, float]
    text_layer: PageOcr | None = None


def prepare_page(cache: SourceCache, task: PageTask, s: Settings, stop: threading.Event | None = None,
                 on_phase: Callable[[str], None] | None = None) -> Prepared:
    """Download and render one page, or read it from its text layer (``OCRSTREAM_TEXT_LAYER``,
    :mod:`ocrstream.textlayer`).

    ``on_phase("download")`` and ``on_phase("render")`` are called as each phase starts, so the
    caller can hold each to its time budget (``OCRSTREAM_DOWNLOAD_TIMEOUT_S``, ``OCRSTREAM_RENDER_TIMEOUT_S``).

    Returns:
        the :class:`Prepared` page; timings ``download_ms`` and ``render_ms`` (or ``text_layer_ms``).

    Raises:
        OcrstreamError: see :meth:`SourceCache.get`, plus ``page_too_large``, and ``no_text_layer``
            (``OCRSTREAM_TEXT_LAYER=only`` and the page has none to read).
    """
    phase = on_phase or (lambda name: None)
    phase("download")
    t0 = time.perf_counter()
    with cache.lease(task, stop) as (data, doc):
        t1 = time.perf_counter()
        if task.kind == "pdf":
            phase("render")  # the wait for MuPDF counts against the render budget, not the download's
            dpi = task.dpi or s.render_dpi
            with _MUPDF_LOCK:
                page = 1 if task.slice is not None else task.page_number  # a slice holds only this page
                if s.text_layer != "off":
                    read = _text_layer(doc, page, dpi, s.max_page_pixels)
                    if read is not None:
                        ocr, shape = read
                        ms = round((time.perf_counter() - t1) * 1000, 1)
                        return Prepared(None, shape, {"download_ms": round((t1 - t0) * 1000, 1), "text_layer_ms": ms},
                                        ocr)
                    if s.text_layer == "only":
                        raise OcrstreamError(ReasonCode.NO_TEXT_LAYER, f"page {task.page_number} has no text layer "
                                             "that holds its visible text (OCRSTREAM_TEXT_LAYER=only)")
                image = render_pdf_page(doc, page, dpi, s.max_page_pixels)
        else:
            if s.text_layer == "only":
                raise OcrstreamError(ReasonCode.NO_TEXT_LAYER, "an image has no text layer (OCRSTREAM_TEXT_LAYER=only)")
            phase("render")
            image = decode_image_page(data, task.page_number, s.max_page_pixels)
        t2 = time.perf_counter()
    return Prepared(image, image.shape[:2], {"download_ms": round((t1 - t0) * 1000, 1),
                                             "render_ms": round((t2 - t1) * 1000, 1)})


def _text_layer(doc, page_number: int, dpi: int, max_page_pixels: int) -> tuple[PageOcr, tuple[int, int]] | None:
    """``(detections, (height, width) of the page rendered at dpi)`` from the page's text layer, or
    None (OCR it). The page-size limit applies as it would to the render."""
    try:
        page = doc.load_page(page_number - 1)
    except Exception:  # noqa: BLE001 - the render reports a broken page with its reason code
        return None
    w, h = math.ceil(page.rect.width * dpi / 72), math.ceil(page.rect.height * dpi / 72)
    if w * h > max_page_pixels:
        return None  # render_pdf_page refuses it with page_too_large
    ocr = read_text_layer(page, dpi)
    return (ocr, (h, w)) if ocr is not None else None
