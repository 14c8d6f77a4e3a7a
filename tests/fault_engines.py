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
