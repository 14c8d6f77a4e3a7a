"""Page orientation: pages scanned sideways or upside down are read upright.

Any :class:`~.base.Engine` is wrapped; the evidence is the recognizer's own: text read the right
way up gets high confidences, text read sideways or upside down does not. Measured with PP-OCRv6
small on 6 receipts and 3 scanned court filings, each page as stored and turned by 90, 180 and
270 degrees: the median line confidence of an upright page was 0.989-0.999, of a turned one
0.60-0.76 (the recognizer reads a page turned 90 degrees clockwise well line by line, since tall
crops are turned before recognition, but in the wrong reading order and with tall boxes).

The rule, per page:

1. OCR the page as given. It is taken as upright when it has fewer than :data:`MIN_LINES`
   lines (too little evidence) or when its median confidence is at least
   ``OCRSTREAM_ORIENTATION_MIN_CONFIDENCE`` (0.85) and most of its boxes are wider than tall:
   an upright page costs nothing more.
2. Otherwise the page is OCR'd again turned by 180 degrees, or, when most boxes are taller than
   wide (lines run vertically), by 90 and by 270 degrees. The turned reading with the highest
   median confidence wins: an upside-down reading if it beats the page as given by
   :data:`MARGIN`; a sideways one if its lines run across the turned page and it reads no worse
   than the page as given less :data:`MARGIN`.

Polygons stay in the pixel grid of the image as stored (``width`` x ``height``); each is listed
clockwise from the *text's* top-left corner, so a line on an upside-down page starts at its
bottom-right in image coordinates. ``PageOcr.rotation`` says how far the page was turned
clockwise to be read (0, 90, 180, 270 degrees), and detections are in the reading order of the
upright page.
"""

from __future__ import annotations

import statistics

import numpy as np

from schemas import EngineInfo

from .base import Engine, PageOcr, TextLine

MIN_LINES = 3
"""Fewer lines than this: no orientation check (one or two short lines are weak evidence)."""
MARGIN = 0.1
"""A turned reading must beat the page as given by this much median confidence (upright pages
measured 0.99, turned ones at most 0.76: the gap is over 0.2)."""
TALL = 1.5
"""A box at least this many times taller than wide is a vertical line (RapidOCR turns such crops
before recognition with the same ratio)."""


def _median_conf(page: PageOcr) -> float:
    return statistics.median(line.confidence for line in page.lines) if page.lines else 0.0


def _ms(page: PageOcr) -> float:
    return page.timings_ms.get("det_ms", 0.0) + page.timings_ms.get("rec_ms", 0.0)


def _tall_share(page: PageOcr) -> float:
    """Share of the page's lines whose box is taller than wide (by :data:`TALL`)."""
    tall = 0
    for line in page.lines:
        (x0, y0), (x1, y1), _, (x3, y3) = line.polygon
        width = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
        height = ((x3 - x0) ** 2 + (y3 - y0) ** 2) ** 0.5
        tall += height >= TALL * width
    return tall / len(page.lines) if page.lines else 0.0


def second_readings(page: PageOcr, min_confidence: float) -> list[int]:
    """The turns (clockwise degrees) to read ``page`` again at, by rule 1 of the module docstring:
    ``[]`` (upright, or too few lines to tell), ``[180]``, or ``[90, 270]`` (lines run vertically)."""
    if len(page.lines) < MIN_LINES:
        return []
    if _tall_share(page) > 0.5:
        return [90, 270]
    return [] if _median_conf(page) >= min_confidence else [180]


def turn(image: np.ndarray, clockwise: int) -> np.ndarray:
    """``image`` (``HxWx3``) turned clockwise by 0, 90, 180 or 270 degrees (exact, no resampling)."""
    return np.ascontiguousarray(np.rot90(image, k=-(clockwise // 90) % 4))


def unturn_point(x: float, y: float, clockwise: int, width: int, height: int) -> list[float]:
    """A point of the image turned clockwise by ``clockwise`` degrees, in pixels of the image as
    stored (``width`` x ``height``; pixel edges, so the mapping is exact at the borders)."""
    if clockwise == 90:   # turned size height x width: x' = height - y, y' = x
        return [y, height - x]
    if clockwise == 180:
        return [width - x, height - y]
    if clockwise == 270:  # x' = y, y' = width - x
        return [width - y, x]
    return [x, y]


def unturn(page: PageOcr, clockwise: int, width: int, height: int) -> PageOcr:
    """``page`` read from the image turned by ``clockwise`` degrees, with polygons mapped back to
    the stored image (point order kept: clockwise from the text's top-left)."""
    lines = [TextLine(text=line.text, confidence=line.confidence,
                      polygon=[[round(v, 1) for v in unturn_point(x, y, clockwise, width, height)]
                               for x, y in line.polygon]) for line in page.lines]
    return PageOcr(lines=lines, timings_ms=dict(page.timings_ms), rotation=clockwise)


class OrientingEngine:
    """Wraps an engine so that turned pages are read upright (see module docstring).

    Args:
        inner: the engine doing the OCR.
        min_confidence: median line confidence (0-1) above which a page with mostly wide boxes is
            taken as upright without a second reading.
    """

    def __init__(self, inner: Engine, min_confidence: float = 0.85):
        self.inner = inner
        self.min_confidence = min_confidence
        self.info: EngineInfo = inner.info

    def __getattr__(self, name: str):
        # Everything else (batch sizes, runtime details) is the inner engine's.
        return getattr(self.inner, name)

    def ocr_batch(self, images: list[np.ndarray]) -> list[PageOcr]:
        """OCR pages (``HxWx3 uint8 BGR``), turned pages read upright.

        Raises:
            MemoryError, Exception: as the inner engine's :meth:`~.base.Engine.ocr_batch`.
        """
        results = self.inner.ocr_batch(images)
        # Second readings of all doubtful pages of the batch go through the engine together.
        trials = [(i, cw) for i, page in enumerate(results) for cw in second_readings(page, self.min_confidence)]
        if not trials:
            return results
        turned = self.inner.ocr_batch([turn(images[i], cw) for i, cw in trials])
        best: dict[int, tuple[float, int, PageOcr]] = {}
        for (i, cw), page in zip(trials, turned):
            score, given = _median_conf(page), _median_conf(results[i])
            if cw == 180:  # upside down: only clearly better reading wins
                wins = score >= given + MARGIN
            else:  # sideways: lines that run across the turned page, read about as well or better, win (a page
                # turned 90 degrees clockwise is read well line by line already, but in the wrong order)
                wins = score >= given - MARGIN and _tall_share(page) <= 0.5
            if wins and score > best.get(i, (-1.0, 0, page))[0]:
                best[i] = (score, cw, page)
        spent: dict[int, float] = {}  # page -> ms of its readings, all of them
        for (i, _), page in zip(trials, turned):
            spent[i] = spent.get(i, _ms(results[i])) + _ms(page)
        for i, total in spent.items():
            if i in best:
                h, w = images[i].shape[:2]
                results[i] = unturn(best[i][2], best[i][1], w, h)
            # det_ms/rec_ms stay those of the reading kept; the other readings are the orientation's cost.
            results[i].timings_ms["orientation_ms"] = round(total - _ms(results[i]), 1)
        return results
