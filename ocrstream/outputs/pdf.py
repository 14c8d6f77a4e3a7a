"""Searchable PDF: the original pages with an invisible text layer on each detection.

As OCRmyPDF does (its "hocrtransform" renderer): the page images stay as they are and every
recognized line is written in text render mode 3 (neither fill nor stroke: PDF 32000-1:2008,
9.3.6) on top of its polygon, so a viewer shows the scan and search, selection and
``get_text`` find the recognized text where the page shows it.

- PDF sources keep their own pages (no re-rendering, no quality loss); polygons, in pixels of
  the page rendered at the result's DPI, become PDF points by ``72 / dpi`` and are mapped
  through the page's derotation so that rotated pages line up too. Pages that already have
  text (read from their own text layer, or OCR'd with ``OCRSTREAM_TEXT_LAYER=off``) get no
  second layer, as OCRmyPDF's ``--skip-text`` does: search and extraction would find it twice.
- Image sources (PNG, JPEG, TIFF frames, ...) become one page per frame, sized so that the
  image keeps its resolution (``OCRSTREAM_RENDER_DPI`` when the file states none); the
  pixels are the ones that were OCR'd (EXIF orientation applied), so polygons fit as they are.

Font: Helvetica (a PDF base-14 font, nothing embedded) when the text is WinAnsi, else MuPDF's
built-in Droid Sans Fallback (CJK and most other scripts; embedded as a subset), so the
extracted text is what was recognized; a character neither font has (emoji, some scripts) is
written as ``?`` and control characters are dropped. Each line gets a font size that makes its extracted box as tall as the polygon
(``height / (ascender - descender)``) and a horizontal scale that makes it as wide.
"""

from __future__ import annotations

import io
import math

import pymupdf

from ocrstream.documents import decode_image_page, open_image, open_pdf, sniff
from ocrstream.errors import OcrstreamError, ReasonCode
from schemas import Detection, DocumentResult, Page

from .text import xml_safe

_HELV = pymupdf.Font("helv")
_FALLBACK: pymupdf.Font | None = None  # loaded on first need (a 4 MB font)


def _font_for(text: str) -> pymupdf.Font:
    global _FALLBACK
    try:
        text.encode("cp1252")
        return _HELV
    except UnicodeEncodeError:
        if _FALLBACK is None:
            _FALLBACK = pymupdf.Font("cjk")
        return _FALLBACK


def add_text_layer(page: pymupdf.Page, detections: list[Detection], scale: float,
                   to_page: pymupdf.Matrix | None = None) -> int:
    """Write each detection invisibly (render mode 3) over its polygon.

    Args:
        page: the PDF page to write on.
        detections: lines with ``polygon`` = 4 ``[x, y]`` points in pixels, clockwise from top-left.
        scale: PDF points per pixel (``72 / dpi``).
        to_page: maps the (scaled) rendered-page coordinates to the page's unrotated space
            (``page.derotation_matrix`` for a rotated page); None for the identity.

    Returns:
        How many lines were written (empty texts and degenerate polygons are skipped).
    """
    written = 0
    for det in detections:
        text = xml_safe(det.text).strip()  # control characters would end the text run in MuPDF
        if not text:
            continue
        pts = [pymupdf.Point(x * scale, y * scale) for x, y in det.polygon]
        tl, tr, br, bl = (p * to_page for p in pts) if to_page is not None else pts
        width, height = abs(tr - tl), abs(bl - tl)
        if width < 0.5 or height < 0.5:
            continue
        font = _font_for(text)
        # A character the font has no glyph for would be extracted as some other character: "?" is honest.
        text = "".join(c if c == " " or (c != "\ufffd" and font.has_glyph(ord(c))) else "?" for c in text)
        size = height / (font.ascender - font.descender)
        natural = font.text_length(text, fontsize=size)
        if natural <= 0:
            continue
        angle = math.atan2(tr.y - tl.y, tr.x - tl.x)  # the line's direction, radians
        # Baseline origin: up from the bottom-left corner by the descender, along the line's normal.
        origin = bl + (pymupdf.Point(math.sin(angle), -math.cos(angle)) * (-font.descender * size))
        writer = pymupdf.TextWriter(page.rect)
        writer.append(origin, text, font=font, fontsize=size)
        # Stretch to the polygon's width, then turn to its direction, both about the baseline origin.
        # (morph works in PDF space, y up: the angle's sign flips.)
        writer.write_text(page, render_mode=3,
                          morph=(origin, pymupdf.Matrix(width / natural, 0, 0, 1, 0, 0) * pymupdf.Matrix(-math.degrees(angle))))
        written += 1
    return written


def _image_pages(out: pymupdf.Document, data: bytes, result: DocumentResult, fallback_dpi: int,
                 max_page_pixels: int) -> None:
    with open_image(data, max_page_pixels) as img:
        dpi = img.info.get("dpi")
    try:
        img_dpi = float(dpi[0]) if dpi and float(dpi[0]) >= 36 else float(fallback_dpi)
    except (TypeError, ValueError):
        img_dpi = float(fallback_dpi)
    scale = 72.0 / img_dpi
    for page in result.pages:
        pixels = decode_image_page(data, page.page_number, max_page_pixels)  # HxWx3 BGR, as OCR'd
        h, w = pixels.shape[:2]
        rgb = pixels[:, :, ::-1].copy()
        pix = pymupdf.Pixmap(pymupdf.csRGB, w, h, rgb.tobytes(), False)
        pdf_page = out.new_page(width=w * scale, height=h * scale)
        # JPEG keeps photos and greyscale scans small; the text layer does not care.
        pdf_page.insert_image(pdf_page.rect, stream=pix.tobytes("jpeg", jpg_quality=90) if sniff(data) == "jpeg"
                              else pix.tobytes("png"))
        if page.status == "succeeded":
            add_text_layer(pdf_page, page.detections, scale)


def _pdf_pages(out: pymupdf.Document, data: bytes, result: DocumentResult, fallback_dpi: int) -> None:
    with open_pdf(data) as src:
        out.insert_pdf(src)
    for page in result.pages:
        if page.status != "succeeded" or _from_text_layer(page) or page.page_number > out.page_count:
            continue
        pdf_page = out[page.page_number - 1]
        if pdf_page.get_text().strip():
            continue  # it has text already: a second layer would double it (OCRmyPDF --skip-text does the same)
        scale = 72.0 / (page.dpi or fallback_dpi)
        to_page = pdf_page.derotation_matrix if pdf_page.rotation else None
        add_text_layer(pdf_page, page.detections, scale, to_page)


def _from_text_layer(page: Page) -> bool:
    # Pages read from their own text layer (OCRSTREAM_TEXT_LAYER) already carry that text.
    return (page.model_extra or {}).get("text_source", getattr(page, "text_source", None)) == "text_layer"


def searchable_pdf(result: DocumentResult, data: bytes, *, fallback_dpi: int = 300,
                   max_page_pixels: int = 100_000_000) -> bytes:
    """A searchable PDF of ``result``'s document.

    Args:
        result: the document result (pages in order; failed pages keep their image, no text).
        data: the source object's bytes (the PDF or image that was OCR'd).
        fallback_dpi: resolution assumed for an image that states none (pixels per inch).
        max_page_pixels: largest image accepted (``OCRSTREAM_MAX_PAGE_PIXELS``).

    Returns:
        The PDF file's bytes (compressed, garbage-collected).

    Raises:
        OcrstreamError: ``corrupt_document``, ``encrypted_document``, ``page_too_large``,
            ``unsupported_type`` (the source is not a PDF or a supported image).
    """
    fmt = sniff(data)
    if fmt is None:
        raise OcrstreamError(ReasonCode.UNSUPPORTED_TYPE, "the source is neither a PDF nor a supported image")
    out = pymupdf.open()
    try:
        if fmt == "pdf":
            _pdf_pages(out, data, result, fallback_dpi)
        else:
            _image_pages(out, data, result, fallback_dpi, max_page_pixels)
        buf = io.BytesIO()
        out.subset_fonts()  # only the glyphs used (the fallback font is 4 MB)
        out.save(buf, garbage=3, deflate=True)
        return buf.getvalue()
    finally:
        out.close()
