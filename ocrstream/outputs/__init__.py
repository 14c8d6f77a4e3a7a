"""What a document result becomes where people read it: text, hOCR, ALTO and searchable PDF.

Pure functions of a :class:`~schemas.DocumentResult` (and, for the PDF, the source object's
bytes); the outbox sink and ``ocrstream result`` both use them.
"""

from .alto import to_alto
from .hocr import to_hocr
from .pdf import add_text_layer, searchable_pdf
from .text import document_text, line_box

__all__ = ["add_text_layer", "document_text", "line_box", "searchable_pdf", "to_alto", "to_hocr"]
