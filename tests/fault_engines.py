"""Engines that fail on purpose, loaded into real worker processes with
``OCRSTREAM_ENGINE_PLUGIN=fault_engines:<factory>`` (the tests put this folder on PYTHONPATH).

The marker page is any page of exactly ``MARKER_SIZE`` (width, height) pixels: the engine only
sees pixels, and an image's size survives decoding unchanged.
"""

from __future__ import annotations

import ctypes
import os
import signal

from ocrstream.engine.null import NullEngine

MARKER_SIZE = (333, 111)  # (width, height) pixels of the poison page


def _is_marker(image) -> bool:
    return (image.shape[1], image.shape[0]) == MARKER_SIZE


class _Fault(NullEngine):
    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def ocr_batch(self, images):
        if any(_is_marker(img) for img in images):
            with open(os.environ["FAULT_LOG"], "a") as f:  # proves the fault happened, and how often
                f.write(f"{os.getpid()} {self.how} batch={len(images)}\n")
            if self.how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            ctypes.string_at(0)  # SIGSEGV: reads address 0
        return super().ocr_batch(images)


def kill_on_marker(settings) -> _Fault:
    """SIGKILLs its own process on a marker page."""
    return _Fault("sigkill")


def segfault_on_marker(settings) -> _Fault:
    """Segfaults (SIGSEGV) on a marker page."""
    return _Fault("sigsegv")


class _Sized(NullEngine):
    """Reads every page as one line ``<width>x<height>`` (its pixel size) after sleeping
    ``per_page_s`` per page: an engine whose output tells pages apart and whose batches take
    time without using the CPU (broker failover tests: work stays in flight while a broker is
    killed, and three brokers keep the two cores)."""

    def __init__(self, per_page_s: float):
        super().__init__()
        self.per_page_s = per_page_s

    def ocr_batch(self, images):
        import time

        from ocrstream.engine.base import PageOcr, TextLine

        time.sleep(self.per_page_s * len(images))
        out = []
        for img in images:
            h, w = img.shape[:2]
            box = [[0.0, 0.0], [float(w), 0.0], [float(w), float(h)], [0.0, float(h)]]
            out.append(PageOcr(lines=[TextLine(f"{w}x{h}", box, 0.99)], timings_ms={"det_ms": 0.0, "rec_ms": 0.0}))
        return out


def slow_sized(settings) -> _Sized:
    """:class:`_Sized` with ``SLOW_ENGINE_S`` seconds per page (default 0.3)."""
    return _Sized(float(os.environ.get("SLOW_ENGINE_S", "0.3")))
