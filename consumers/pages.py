"""Turning a PageTask into pixels: download (cached per document) and render/decode.

Several pages of one document usually reach the same worker close together,
so the downloaded object (and, for PDFs, the parsed document) is kept in a
small LRU cache bounded in bytes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np

from ocrstream.documents import decode_image_page, open_pdf, render_pdf_page
from ocrstream.settings import Settings
from ocrstream.storage import ObjectStore, validate_key
from schemas import PageTask

from .common import retry_transient

# MuPDF is not thread-safe (PyMuPDF docs, "Multiprocessing/Multithreading"): one render at a time.
_MUPDF_LOCK = threading.Lock()


class SourceCache:
    """LRU of downloaded objects (and open PDFs), at most ``max_bytes`` of object data."""

    def __init__(self, store: ObjectStore, s: Settings, max_bytes: int = 256 * 1024 * 1024):
        self.store = store
        self.s = s
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[bytes, object]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}

    def get(self, task: PageTask, stop: threading.Event | None = None) -> tuple[bytes, object]:
        """``(object bytes, open pymupdf.Document or None)`` for the task's object.

        Raises:
            OcrstreamError: ``invalid_key``, ``object_not_found``, ``object_too_large``,
                ``storage_error`` (after retries), ``corrupt_document``, ``encrypted_document``.
        """
        src = task.source
        key = (src.bucket, src.key, src.etag, src.version_id)
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:  # one download per object even when its pages arrive together
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            obj_key = validate_key(src.key)
            data = retry_transient(lambda: self.store.get_bytes(src.bucket, obj_key, self.s.max_object_bytes,
                                                                src.version_id), stop=stop)
            doc = None
            if task.kind == "pdf":
                with _MUPDF_LOCK:
                    doc = open_pdf(data)
            with self._lock:
                self._items[key] = (data, doc)
                self._size += len(data)
                while self._size > self.max_bytes and len(self._items) > 1:
                    _, (old, old_doc) = self._items.popitem(last=False)
                    self._size -= len(old)
                    if old_doc is not None:
                        with _MUPDF_LOCK:
                            old_doc.close()
                self._key_locks.pop(key, None)
            return data, doc


def prepare_page(cache: SourceCache, task: PageTask, s: Settings,
                 stop: threading.Event | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Download and render one page.

    Returns:
        ``(HxWx3 uint8 BGR image, {"download_ms", "render_ms"})``.

    Raises:
        OcrstreamError: see :meth:`SourceCache.get`, plus ``page_too_large``.
    """
    t0 = time.perf_counter()
    data, doc = cache.get(task, stop)
    t1 = time.perf_counter()
    if task.kind == "pdf":
        with _MUPDF_LOCK:
            image = render_pdf_page(doc, task.page_number, task.dpi or s.render_dpi, s.max_page_pixels)
    else:
        image = decode_image_page(data, task.page_number, s.max_page_pixels)
    t2 = time.perf_counter()
    return image, {"download_ms": round((t1 - t0) * 1000, 1), "render_ms": round((t2 - t1) * 1000, 1)}
