"""hOCR 1.2 (http://kba.github.io/hocr-spec/1.2/): one ``ocr_page`` per page, one ``ocr_line``
per detection, with its bounding box (pixels of the OCR'd image, the polygon's enclosing
axis-aligned box) and its confidence as ``x_wconf`` (0-100).

Only lines are claimed (``ocr-capabilities: ocr_page ocr_line``): the engine recognizes whole
lines and reports no word boxes, and inventing word boxes by splitting a line's width would
put them where the page has no words.
"""

from __future__ import annotations

from html import escape

from schemas import Detection, DocumentResult

from .text import line_box, xml_safe

_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
 <head>
  <title>{title}</title>
  <meta http-equiv="Content-Type" content="text/html;charset=utf-8"/>
  <meta name="ocr-system" content="ocrstream {engine}"/>
  <meta name="ocr-capabilities" content="ocr_page ocr_line"/>
  <meta name="ocr-number-of-pages" content="{pages}"/>
 </head>
 <body>
"""


def _line(det: Detection, page_no: int, n: int) -> str:
    x0, y0, x1, y1 = line_box(det)
    return (f'   <span class="ocr_line" id="line_{page_no}_{n}" '
            f'title="bbox {x0} {y0} {x1} {y1}; x_wconf {round(det.confidence * 100)}">{escape(xml_safe(det.text))}</span>\n')


def to_hocr(result: DocumentResult) -> str:
    """The document result as an hOCR 1.2 (XHTML) document.

    Failed pages are empty ``ocr_page`` elements (their size is unknown: ``bbox 0 0 0 0``).
    ``ppageno`` is 0-based, as the spec defines it; ``scan_res`` is the render DPI of PDF pages.
    """
    filename = result.source.filename if result.source else result.document_id
    engine = " ".join(x for x in (result.engine.name, result.engine.rec_model) if x) if result.engine else ""
    filename = xml_safe(filename)
    out = [_HEAD.format(title=escape(filename), engine=escape(xml_safe(engine)), pages=len(result.pages))]
    for page in result.pages:
        title = (f'image &quot;{escape(filename)}&quot;; ppageno {page.page_number - 1}; '
                 f'bbox 0 0 {page.width} {page.height}')
        if page.dpi:
            title += f"; scan_res {page.dpi} {page.dpi}"
        out.append(f'  <div class="ocr_page" id="page_{page.page_number}" title="{title}">\n')
        for n, det in enumerate(page.detections, 1):
            out.append(_line(det, page.page_number, n))
        out.append("  </div>\n")
    out.append(" </body>\n</html>\n")
    return "".join(out)
