"""Text-layer fast path: a born-digital PDF page's detections read from its own text layer.

``OCRSTREAM_TEXT_LAYER`` (``auto`` | ``off`` | ``only``): with ``auto`` a PDF page whose text layer
holds its visible text gets its detections from that layer (exact, and hundreds of times faster
than rendering + OCR); every other page is OCR'd. ``only`` fails pages that do not qualify
(``no_text_layer``) instead of OCR'ing them; ``off`` OCRs every page.

The decision (:func:`read_text_layer`), per page, from PyMuPDF's ``Page.get_texttrace()`` (each
text span with its render mode and opacity) and ``Page.get_image_info()``:

1. at least :data:`MIN_CHARS` visible characters: not render mode 3 (the invisible layer OCR tools
   such as OCRmyPDF lay over a scan), not fully transparent;
2. at most :data:`MAX_UNMAPPED` of them without a Unicode mapping (U+FFFD, private-use code
   points: a font without ``ToUnicode`` whose text would come out as garbage);
3. images cover at most :data:`MAX_IMAGE_SHARE` of the page: a scan, or a page with a large
   picture that may hold text of its own (a mixed page), goes to OCR. Small logos and icons do
   not count against a page.

A qualifying page's detections are its text lines in the order of the page's own text blocks
(``get_text("dict")``, as ``get_text()`` reads them: an index in two columns stays column by
column, which sorting by position would interleave), each with confidence 1.0 and a polygon in pixels of the page
rendered at the task's DPI (the grid an OCR'd page would have: PDF points * dpi / 72, after the
page's own ``/Rotate``), clockwise from the text's top-left corner.
"""

from __future__ import annotations

import math

import pymupdf

from .engine.base import PageOcr, TextLine

MIN_CHARS = 20
"""Fewer visible characters than this: the page is OCR'd (a scan with a stamp or a page number)."""
MAX_UNMAPPED = 0.05
"""Share of visible characters that may lack a Unicode mapping."""
MAX_IMAGE_SHARE = 0.10
"""Share of the page area images may cover (union of their boxes, clipped to the page)."""

_UNMAPPED = {0, 0xFFFD}


def _unmapped(code: int) -> bool:
    return code in _UNMAPPED or 0xE000 <= code <= 0xF8FF  # private use: glyph names with no Unicode


def _image_share(page: pymupdf.Page) -> float:
    """Share of the page covered by images (bounding boxes, overlaps counted once, on a coarse grid)."""
    rect = page.rect if not page.rotation else page.cropbox
    area = rect.width * rect.height
    boxes = [pymupdf.Rect(info["bbox"]) & rect for info in page.get_image_info()]
    boxes = [b for b in boxes if not b.is_empty]
    if not boxes or area <= 0:
        return 0.0
    if len(boxes) == 1:
        return boxes[0].width * boxes[0].height / area
    # Union on a 100x100 grid: exact enough for a threshold, and bounded however many images there are.
    covered = set()
    for b in boxes[:500]:
        for i in range(int(100 * (b.x0 - rect.x0) / rect.width), math.ceil(100 * (b.x1 - rect.x0) / rect.width)):
            for j in range(int(100 * (b.y0 - rect.y0) / rect.height), math.ceil(100 * (b.y1 - rect.y0) / rect.height)):
                covered.add((i, j))
    return len(covered) / 10_000


def _quad(bbox, direction) -> list[pymupdf.Point]:
    """The line's box as 4 points clockwise from the text's top-left, given its writing direction
    (a unit vector in unrotated page coordinates, y down)."""
    ux, uy = direction
    vx, vy = -uy, ux  # "down" for the text: the direction turned 90 degrees clockwise (y down)
    corners = [(bbox[0], bbox[1]), (bbox[2], bbox[1]), (bbox[2], bbox[3]), (bbox[0], bbox[3])]
    s = [x * ux + y * uy for x, y in corners]
    t = [x * vx + y * vy for x, y in corners]
    s0, s1, t0, t1 = min(s), max(s), min(t), max(t)
    return [pymupdf.Point(ux * a + vx * b, uy * a + vy * b) for a, b in ((s0, t0), (s1, t0), (s1, t1), (s0, t1))]


def qualifies(page: pymupdf.Page) -> tuple[bool, str]:
    """Whether ``page``'s text layer holds its visible text (rules 1-3 of the module docstring),
    and why not."""
    visible = unmapped = 0
    for span in page.get_texttrace():
        if span.get("type") == 3 or span.get("opacity", 1.0) <= 0:
            continue
        for char in span.get("chars", ()):
            code = char[0]
            if code in (32, 9, 10, 13, 0xA0):
                continue
            visible += 1
            unmapped += _unmapped(code)
    if visible < MIN_CHARS:
        return False, f"{visible} visible characters (< {MIN_CHARS})"
    if unmapped > MAX_UNMAPPED * visible:
        return False, f"{unmapped} of {visible} characters without a Unicode mapping"
    share = _image_share(page)
    if share > MAX_IMAGE_SHARE:
        return False, f"images cover {share:.0%} of the page (> {MAX_IMAGE_SHARE:.0%})"
    return True, "text layer"


def text_layer_lines(page: pymupdf.Page, dpi: int) -> list[TextLine]:
    """The page's text lines as detections (confidence 1.0), polygons in pixels at ``dpi``."""
    to_pixels = page.rotation_matrix * pymupdf.Matrix(dpi / 72, dpi / 72)
    lines = []
    for block in page.get_text("dict")["blocks"]:
        for line in block.get("lines", ()):
            text = "".join(span["text"] for span in line["spans"]).strip()
            if not text:
                continue
            quad = [p * to_pixels for p in _quad(line["bbox"], line["dir"])]
            lines.append(TextLine(text=text, confidence=1.0, polygon=[[round(p.x, 1), round(p.y, 1)] for p in quad]))
    return lines


def read_text_layer(page: pymupdf.Page, dpi: int) -> PageOcr | None:
    """The page's detections from its text layer, or None when it must be OCR'd (see module docstring).

    Never raises: a text layer PyMuPDF cannot read sends the page to OCR.
    """
    try:
        ok, _ = qualifies(page)
        return PageOcr(lines=text_layer_lines(page, dpi)) if ok else None
    except Exception:  # noqa: BLE001 - a broken text layer is a reason to OCR, never a failed page
        return None
