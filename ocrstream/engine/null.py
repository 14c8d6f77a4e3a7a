"""Measurement mode: no OCR at all (``OCRSTREAM_ENGINE=none``).

Pages are still downloaded, rendered and published, with empty detections, so
the framework's own ceiling (Kafka, storage, JSON, rendering) can be measured
without the model in the way. Never use it for real results.
"""

from __future__ import annotations

import numpy as np

from schemas import EngineInfo

from .base import PageOcr


class NullEngine:
    """Returns no detections for every page (measurement mode)."""

    def __init__(self) -> None:
        self.info = EngineInfo(name="none", det_model=None, rec_model=None, device="cpu",
                               version="measurement-mode")

    def ocr_batch(self, images: list[np.ndarray]) -> list[PageOcr]:
        """One empty :class:`PageOcr` per image (``HxWx3 uint8`` arrays, unused)."""
        return [PageOcr(lines=[], timings_ms={"det_ms": 0.0, "rec_ms": 0.0}) for _ in images]
