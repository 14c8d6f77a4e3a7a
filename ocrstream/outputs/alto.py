"""ALTO XML 4.4 (https://www.loc.gov/standards/alto/): one ``Page`` per page, one ``TextLine``
holding one ``String`` per detection (whole lines, as the engine reports them; ``WC`` = the
line's confidence 0-1). Measurements are pixels of the OCR'd image (``MeasurementUnit pixel``).
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from schemas import DocumentResult

from .text import line_box, xml_safe

_NS = "http://www.loc.gov/standards/alto/ns-v4#"


def to_alto(result: DocumentResult) -> str:
    """The document result as an ALTO 4.4 XML document."""
    filename = xml_safe(result.source.filename if result.source else result.document_id)
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n',
           f'<alto xmlns="{_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
           f'xsi:schemaLocation="{_NS} http://www.loc.gov/alto/v4/alto-4-4.xsd">\n',
           ' <Description>\n  <MeasurementUnit>pixel</MeasurementUnit>\n',
           f'  <sourceImageInformation><fileName>{escape(filename)}</fileName></sourceImageInformation>\n',
           ' </Description>\n <Layout>\n']
    for page in result.pages:
        pid = f"page_{page.page_number}"
        out.append(f'  <Page ID="{pid}" PHYSICAL_IMG_NR="{page.page_number}" WIDTH="{page.width}" '
                   f'HEIGHT="{page.height}">\n   <PrintSpace HPOS="0" VPOS="0" WIDTH="{page.width}" '
                   f'HEIGHT="{page.height}">\n')
        for n, det in enumerate(page.detections, 1):
            x0, y0, x1, y1 = line_box(det)
            box = f'HPOS="{x0}" VPOS="{y0}" WIDTH="{x1 - x0}" HEIGHT="{y1 - y0}"'
            out.append(f'    <TextLine ID="{pid}_line_{n}" {box}><String {box} CONTENT={quoteattr(xml_safe(det.text))} '
                       f'WC="{det.confidence:.3f}"/></TextLine>\n')
        out.append("   </PrintSpace>\n  </Page>\n")
    out.append(" </Layout>\n</alto>\n")
    return "".join(out)
