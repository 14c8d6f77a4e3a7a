"""Plain text of a document result, and the line box every layout format shares."""

from __future__ import annotations

import math
import re

from schemas import Detection, DocumentResult


def document_text(result: DocumentResult) -> str:
    """All recognized text: lines in reading order separated by newlines, pages by a form feed
    (``\\f``, as ``pdftotext`` writes them); ends with a newline when there is any text."""
    text = result.text()
    return text + "\n" if text else text


def line_box(det: Detection) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the smallest box of whole pixels around the detection's polygon
    (pixels of the OCR'd image, top-left origin)."""
    xs = [p[0] for p in det.polygon]
    ys = [p[1] for p in det.polygon]
    return (max(0, math.floor(min(xs))), max(0, math.floor(min(ys))), math.ceil(max(xs)), math.ceil(max(ys)))


# Characters XML 1.0 does not allow (section 2.2, "Char"): C0 controls but tab/LF/CR, surrogates,
# U+FFFE/U+FFFF. A recognizer can emit them; hOCR and ALTO must still parse.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """``text`` without the characters XML 1.0 forbids (not escaped: the caller escapes)."""
    return _NOT_XML.sub("", text)
