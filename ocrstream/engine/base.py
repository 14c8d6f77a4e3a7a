"""The one engine interface every OCR runtime implements.

Consumers, tests and benchmarks call :meth:`Engine.ocr_batch` and never branch
on which runtime is behind it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from schemas import EngineInfo


@dataclass
class TextLine:
    """One recognized line.

    Attributes:
        text: recognized text.
        polygon: 4 ``[x, y]`` points in pixels of the input image, clockwise
            from top-left.
        confidence: recognition confidence in [0, 1].
    """

    text: str
    polygon: list[list[float]]
    confidence: float


@dataclass
class PageOcr:
    """Engine output for one page: lines in reading order, per-stage times (ms), and how far the
    page was turned clockwise to be read (degrees: 0, 90, 180, 270; polygons stay in pixels of
    the image as given, see :mod:`.orientation`)."""

    lines: list[TextLine]
    timings_ms: dict[str, float] = field(default_factory=dict)
    rotation: int = 0


class Engine(Protocol):
    """An OCR runtime: text detection followed by text recognition.

    Implementations batch across the pages they are given: one call with N
    pages must cost less than N calls with one page.
    """

    info: EngineInfo

    def ocr_batch(self, images: list[np.ndarray]) -> list[PageOcr]:
        """OCR a micro-batch of pages.

        Args:
            images: pages as ``HxWx3 uint8 BGR`` arrays (any sizes).

        Returns:
            one :class:`PageOcr` per image, in the same order.

        Raises:
            MemoryError: the accelerator ran out of memory (callers split the
                batch and retry).
            Exception: any other runtime failure of the batch.
        """
        ...
