"""Document types, page counting and page rendering, with the input limits.

PDFs are rendered with PyMuPDF (``Page.get_pixmap(dpi=...)``); images (PNG,
JPEG, TIFF incl. multi-page, BMP, WebP) are decoded with Pillow. The type is
taken from the file's leading bytes ("magic numbers"), never from the name
alone; a known extension that contradicts the bytes is refused
(``type_mismatch``) because it usually means a mislabelled or hostile upload.

Every failure raises :class:`~ocrstream.errors.OcrstreamError` with a reason code.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

import numpy as np
import pymupdf
from PIL import Image, ImageOps

from .errors import OcrstreamError, ReasonCode

Kind = Literal["pdf", "image"]

# Leading bytes of each supported format (file signatures as published by each format's spec).
_MAGIC: list[tuple[bytes, str]] = [
    (b"%PDF-", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"BM", "bmp"),
]
_EXTENSIONS = {
    ".pdf": "pdf", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
    ".bmp": "bmp", ".webp": "webp",
}
CONTENT_TYPES = {
    "pdf": "application/pdf", "png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff",
    "bmp": "image/bmp", "webp": "image/webp",
}

pymupdf.TOOLS.mupdf_display_errors(False)  # errors surface as exceptions; keep stderr clean


def sniff(data: bytes) -> str | None:
    """File format from its leading bytes: ``pdf|png|jpeg|tiff|bmp|webp`` or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    # PDF headers may be preceded by up to 1024 bytes of junk (PDF 1.7 spec, annex H.3).
    if b"%PDF-" in data[:1024]:
        return "pdf"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    return None


@dataclass(frozen=True)
class DocumentInfo:
    """What the splitter learns about a document."""

    format: str  # pdf | png | jpeg | tiff | bmp | webp
    kind: Kind
    page_count: int


def inspect(data: bytes, filename: str, *, max_pages: int, max_page_pixels: int) -> DocumentInfo:
    """Identify a document and count its pages, enforcing the limits.

    Args:
        data: the whole file.
        filename: original name (only its extension is used, for the mismatch check).
        max_pages: most pages accepted.
        max_page_pixels: largest image accepted (width x height pixels); PDFs are
            checked per page at render time since their size depends on the DPI.

    Raises:
        OcrstreamError: ``empty_object``, ``unsupported_type``, ``type_mismatch``,
            ``corrupt_document``, ``encrypted_document``, ``no_pages``,
            ``too_many_pages``, ``page_too_large``.
    """
    if not data:
        raise OcrstreamError(ReasonCode.EMPTY_OBJECT, "the object is empty (0 bytes)")
    fmt = sniff(data)
    ext = PurePosixPath(filename).suffix.lower()
    if fmt is None:
        raise OcrstreamError(ReasonCode.UNSUPPORTED_TYPE,
                             f"unsupported file type (extension {ext or 'none'!r}, unknown leading bytes)")
    if ext in _EXTENSIONS and _EXTENSIONS[ext] != fmt:
        raise OcrstreamError(ReasonCode.TYPE_MISMATCH, f"file is named {ext!r} but its bytes are {fmt}")
    if fmt == "pdf":
        doc = open_pdf(data)
        try:
            n = doc.page_count
        except Exception as exc:  # e.g. RuntimeError "Invalid number of pages" from a lying /Count
            raise OcrstreamError(ReasonCode.CORRUPT_DOCUMENT, f"PDF page tree cannot be read: {exc}") from None
        finally:
            doc.close()
        kind: Kind = "pdf"
    else:
        with open_image(data, max_page_pixels) as img:
            n = _count_frames(img, max_pages) if fmt == "tiff" else 1
        kind = "image"
    if n < 1:
        raise OcrstreamError(ReasonCode.NO_PAGES, "the document has no pages")
    if n > max_pages:
        raise OcrstreamError(ReasonCode.TOO_MANY_PAGES, f"the document has {n} pages, limit {max_pages}")
    return DocumentInfo(fmt, kind, n)


def open_pdf(data: bytes) -> pymupdf.Document:
    """Open PDF bytes with PyMuPDF.

    Raises:
        OcrstreamError: ``corrupt_document`` (unparseable), ``encrypted_document``
            (needs a password).
    """
    try:
        doc = pymupdf.open(stream=data, filetype="pdf")
    except Exception as exc:  # pymupdf raises FileDataError, RuntimeError, ValueError...
        raise OcrstreamError(ReasonCode.CORRUPT_DOCUMENT, f"PDF cannot be parsed: {exc}") from None
    try:
        needs_pass = doc.needs_pass
    except Exception as exc:
        doc.close()
        raise OcrstreamError(ReasonCode.CORRUPT_DOCUMENT, f"PDF cannot be parsed: {exc}") from None
    if needs_pass:
        doc.close()
        raise OcrstreamError(ReasonCode.ENCRYPTED_DOCUMENT, "PDF is password-protected")
    return doc


def open_image(data: bytes, max_page_pixels: int) -> Image.Image:
    """Open image bytes lazily (header only) and refuse decompression bombs.

    Raises:
        OcrstreamError: ``page_too_large``, ``corrupt_document``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise OcrstreamError(ReasonCode.PAGE_TOO_LARGE, f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, OSError, SyntaxError, ValueError,
        # and from malformed headers also TypeError, KeyError, struct.error, ZeroDivisionError...
        raise OcrstreamError(ReasonCode.CORRUPT_DOCUMENT,
                             f"image cannot be decoded: {type(exc).__name__}: {exc}") from None
    w, h = img.size
    if w * h > max_page_pixels:
        img.close()
        raise OcrstreamError(ReasonCode.PAGE_TOO_LARGE, f"image is {w}x{h} pixels, limit {max_page_pixels} pixels")
    return img


def page_weights(doc: pymupdf.Document) -> list[float]:
    """Relative OCR cost of each page of a PDF, about 1.0 for a typical page of the document.

    Recognition time grows with the text on a page and detection time does not (2 cores, scanned
    court filings: detection ~1.5 s on every page, recognition 0.4 s on a near-blank page and
    4.8 s on a dense one). The stored size of a page (its images' and content streams' ``Length``)
    tracks its ink within one document, whose pages share one encoding (CCITT scans: 2 KB blank,
    ~50 KB dense), so the weight is ``0.35 + 0.65 * min(2, size / median size)``. Only
    comparisons within a document are meaningful; each weight is in [0.35, 1.65]. Unreadable or
    negative lengths count as 0.
    """
    sizes = []
    for page in doc:
        size = 0
        for xref in [x[0] for x in page.get_images(full=True)] + page.get_contents():
            kind, value = doc.xref_get_key(xref, "Length")
            if kind == "xref":  # an indirect length, "12 0 R": the number is that object
                value = doc.xref_object(int(value.split()[0]), compressed=True).strip()
            size += max(0, int(value)) if value.lstrip("-").isdigit() else 0  # a crafted negative length is 0
        sizes.append(size)
    median = sorted(sizes)[len(sizes) // 2] if sizes else 0
    return [0.35 + 0.65 * (min(2.0, size / median) if median else 1.0) for size in sizes]


def render_pdf_page(doc: pymupdf.Document, page_number: int, dpi: int, max_page_pixels: int) -> np.ndarray:
    """Render one PDF page.

    Args:
        doc: an open document.
        page_number: 1-based.
        dpi: render resolution (72 DPI = 1 pixel per PDF point).

    Returns:
        ``HxWx3 uint8 BGR`` array, H and W in pixels at ``dpi``.

    Raises:
        OcrstreamError: ``page_too_large`` (before any pixel is allocated),
            ``corrupt_document``.
    """
    try:
        page = doc.load_page(page_number - 1)
        rect = page.rect
        w, h = math.ceil(rect.width * dpi / 72), math.ceil(rect.height * dpi / 72)
        if w * h > max_page_pixels:
            raise OcrstreamError(ReasonCode.PAGE_TOO_LARGE,
                                 f"page {page_number} renders to {w}x{h} pixels at {dpi} DPI, limit {max_page_pixels}")
        pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csRGB, alpha=False)
    except OcrstreamError:
        raise
    except Exception as exc:
        raise OcrstreamError(ReasonCode.CORRUPT_DOCUMENT, f"page {page_number} cannot be rendered: {exc}") from None
    rgb = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.stride)[:, : pix.width * 3]
    return np.ascontiguousarray(rgb.reshape(pix.height, pix.width, 3)[:, :, ::-1])


def decode_image_page(data: bytes, page_number: int, max_page_pixels: int) -> np.ndarray:
    """Decode one frame of an image (multi-page TIFF: frame ``page_number``).

    Handles EXIF orientation, palette, grey, CMYK and 16-bit images.

    Returns:
        ``HxWx3 uint8 BGR`` array.

    Raises:
        OcrstreamError: ``page_too_large``, ``corrupt_document``.
    """
    with open_image(data, max_page_pixels) as img:
        try:
            img.seek(page_number - 1)
            if img.size[0] * img.size[1] > max_page_pixels:
                raise OcrstreamError(ReasonCode.PAGE_TOO_LARGE, f"frame {page_number} is {img.size} pixels")
            img.load()
            frame = ImageOps.exif_transpose(img) if page_number == 1 else img
            rgb = _to_rgb8(frame)
        except OcrstreamError:
            raise
        except Exception as exc:  # noqa: BLE001 - EOFError, OSError, ValueError, SyntaxError, and from
            # corrupt IFDs/EXIF also TypeError ("Missing dimensions"), KeyError, struct.error...
            raise OcrstreamError(ReasonCode.CORRUPT_DOCUMENT,
                                 f"image frame {page_number} cannot be decoded: {type(exc).__name__}: {exc}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _count_frames(img: Image.Image, max_pages: int) -> int:
    """Frames of a multi-frame image, counting at most ``max_pages + 1`` (enough to refuse
    ``too_many_pages`` without walking a hostile file's whole IFD chain).

    Raises:
        OcrstreamError: ``corrupt_document`` when a frame header cannot be read (e.g. a
            next-IFD pointer into garbage makes Pillow raise ``TypeError``).
    """
    n = 0
    try:
        while n <= max_pages:
            try:
                img.seek(n)
            except EOFError:
                break
            n += 1
        if n > 0:
            img.seek(0)
    except Exception as exc:  # noqa: BLE001 - Pillow raises TypeError, ValueError, OSError, struct.error...
        raise OcrstreamError(ReasonCode.CORRUPT_DOCUMENT,
                             f"image frame {n + 1} cannot be read: {type(exc).__name__}: {exc}") from None
    return n


def _to_rgb8(img: Image.Image) -> np.ndarray:
    # 16-bit and 32-bit grey ("I;16", "I") would be clipped by convert("RGB"): rescale to 8 bits first.
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        grey = (arr * (255.0 / top)).clip(0, 255).astype(np.uint8) if top > 255 else arr.astype(np.uint8)
        return np.stack([grey] * 3, axis=-1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Flatten transparency onto white, as a printed page would be.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def content_type_for(filename: str) -> str:
    """MIME type for an upload, from its extension (``application/octet-stream`` if unknown)."""
    fmt = _EXTENSIONS.get(PurePosixPath(filename).suffix.lower())
    return CONTENT_TYPES.get(fmt, "application/octet-stream") if fmt else "application/octet-stream"
