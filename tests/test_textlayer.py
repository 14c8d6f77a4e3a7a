"""Text-layer fast path: born-digital PDF pages read from their own text, everything else OCR'd."""

from __future__ import annotations

import contextlib

import numpy as np
import pymupdf
import pytest

from consumers.pages import prepare_page
from devtools.textmetrics import cer
from ocrstream.errors import OcrstreamError
from ocrstream.textlayer import qualifies, read_text_layer
from schemas import ObjectRef, PageTask

from conftest import base_settings, make_pdf

LINES = ["Quarterly report 2026", "Revenue grew by 12.5 percent", "Net margin: 8.1% (Q3)", "Contact: ops@example.com"]


def _open(data: bytes) -> pymupdf.Document:
    return pymupdf.open(stream=data, filetype="pdf")


def _scan_png(lines: list[str]) -> bytes:
    with _open(make_pdf([lines], fontsize=18)) as doc:
        return doc[0].get_pixmap(dpi=150).tobytes("png")


def _ink_box(page: pymupdf.Page, polygon, dpi: int):
    """Bounding box of the dark pixels inside ``polygon``'s box on the page rendered at ``dpi``."""
    pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY)
    img = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.stride)[:, :pix.width]
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    x0, y0, x1, y1 = int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1
    dark = np.argwhere(img[y0:y1, x0:x1] < 128)
    assert dark.size, "no ink inside the polygon"
    return x0 + dark[:, 1].min(), y0 + dark[:, 0].min(), x0 + dark[:, 1].max() + 1, y0 + dark[:, 0].max() + 1


@pytest.mark.parametrize("rotation", [0, 90, 270])
def test_born_digital_page_reads_its_own_text_with_polygons_on_the_rendered_grid(rotation):
    with _open(make_pdf([LINES])) as doc:
        page = doc[0]
        page.set_rotation(rotation)
        ocr = read_text_layer(page, 150)
        assert ocr is not None
        assert [line.text for line in ocr.lines] == LINES and cer("\n".join(l.text for l in ocr.lines),
                                                                  "\n".join(LINES)) <= 0.005
        assert all(line.confidence == 1.0 for line in ocr.lines)
        w, h = page.get_pixmap(dpi=150).width, page.get_pixmap(dpi=150).height
        for line in ocr.lines:
            assert all(0 <= x <= w and 0 <= y <= h for x, y in line.polygon)
            # the ink of the rendered line lies inside the polygon (it is the grid OCR would see)
            ix0, iy0, ix1, iy1 = _ink_box(page, line.polygon, 150)
            xs, ys = [p[0] for p in line.polygon], [p[1] for p in line.polygon]
            assert min(xs) - 1 <= ix0 and ix1 <= max(xs) + 1 and min(ys) - 1 <= iy0 and iy1 <= max(ys) + 1
        # clockwise from the text's top-left: the first edge runs along the text's direction
        (x0, y0), (x1, y1) = ocr.lines[0].polygon[:2]
        direction = {0: (1, 0), 90: (0, 1), 270: (0, -1)}[rotation]
        assert (x1 - x0) * direction[0] + (y1 - y0) * direction[1] > 0


def test_scans_mixed_pages_and_invisible_ocr_layers_go_to_ocr():
    doc = pymupdf.open()
    scan = doc.new_page(width=595, height=842)
    scan.insert_image(scan.rect, stream=_scan_png(LINES))
    ocr_layer = doc.new_page(width=595, height=842)  # what OCRmyPDF writes: the image + invisible text
    ocr_layer.insert_image(ocr_layer.rect, stream=_scan_png(LINES))
    for i, line in enumerate(LINES):
        ocr_layer.insert_text((60, 90 + 40 * i), line, fontsize=16, render_mode=3)
    mixed = doc.new_page(width=595, height=842)  # real text, and a picture that holds text of its own
    for i, line in enumerate(LINES):
        mixed.insert_text((60, 90 + 40 * i), line, fontsize=16)
    mixed.insert_image(pymupdf.Rect(60, 300, 535, 700), stream=_scan_png(["TEXT IN A FIGURE"]))
    logo = doc.new_page(width=595, height=842)  # real text and a small logo: still born-digital
    for i, line in enumerate(LINES):
        logo.insert_text((60, 90 + 40 * i), line, fontsize=16)
    logo.insert_image(pymupdf.Rect(480, 20, 560, 60), stream=_scan_png(["LOGO"]))
    number = doc.new_page(width=595, height=842)  # a scan with only a stamped page number as text
    number.insert_image(number.rect, stream=_scan_png(LINES))
    number.insert_text((290, 830), "Page 3", fontsize=9)
    verdicts = [qualifies(p) for p in doc]
    assert [ok for ok, _ in verdicts] == [False, False, False, True, False], verdicts
    assert "visible characters" in verdicts[1][1] and "images cover" in verdicts[2][1]
    assert read_text_layer(doc[0], 150) is None and read_text_layer(doc[3], 150) is not None


def test_a_broken_text_layer_sends_the_page_to_ocr_instead_of_failing_it():
    with _open(make_pdf([LINES])) as doc:
        xref = doc[0].get_contents()[0]
        doc.update_stream(xref, b"BT /F9 12 Tf 50 50 Td (unclosed Tj ET q q q 1 0 0 1 cm")  # garbage operators
        assert read_text_layer(doc[0], 150) is None


class _Cache:
    """A SourceCache stand-in: leases one in-memory PDF."""

    def __init__(self, data: bytes):
        self.data = data

    @contextlib.contextmanager
    def lease(self, task, stop=None):
        with _open(self.data) as doc:
            yield self.data, doc


def _task(n: int = 1) -> PageTask:
    return PageTask(document_id="d", source=ObjectRef(bucket="bucket", key="a.pdf", filename="a.pdf"),
                    page_number=n, page_count=2, kind="pdf", dpi=100, submitted_at=0)


def test_prepare_page_modes_auto_off_and_only():
    doc = pymupdf.open(stream=make_pdf([LINES]))
    scan = doc.new_page(width=595, height=842)
    scan.insert_image(scan.rect, stream=_scan_png(LINES))
    cache = _Cache(doc.tobytes())
    auto = prepare_page(cache, _task(1), base_settings(text_layer="auto"))
    assert auto.image is None and [l.text for l in auto.text_layer.lines] == LINES
    assert auto.shape == (1170, 827) and "text_layer_ms" in auto.timings  # 842 x 595 pt at 100 DPI
    assert prepare_page(cache, _task(2), base_settings(text_layer="auto")).image.shape[:2] == (1170, 827)
    off = prepare_page(cache, _task(1), base_settings(text_layer="off"))
    assert off.text_layer is None and off.image.shape[:2] == (1170, 827)
    with pytest.raises(OcrstreamError) as exc:
        prepare_page(cache, _task(2), base_settings(text_layer="only"))
    assert exc.value.code == "no_text_layer"


@pytest.mark.integration
@pytest.mark.slow
def test_pipeline_reads_born_digital_pages_from_their_text_and_ocrs_the_scan(settings, store, stages):
    from consumers.assembler import Assembler
    from consumers.splitter import Splitter
    from consumers.worker import OcrWorker
    from ocrstream.streaming import StopFlag
    from producers.publish import DocumentPublisher
    from schemas import DocumentResult, decode

    from conftest import consume_all

    s = settings.model_copy(update={"text_layer": "auto"})
    mixed = pymupdf.open(stream=make_pdf([LINES, ["Second page", "Total due: 1,204.50 EUR"]]))
    scan = mixed.new_page(width=595, height=842)
    scan.insert_image(scan.rect, stream=_scan_png(["SCANNED APPENDIX", "Signed and sealed"]))
    store.put_bytes("uploads/report.pdf", mixed.tobytes(), "application/pdf")
    for stage in (Splitter(s, StopFlag(install_signals=False)), OcrWorker(s, stop=StopFlag(install_signals=False)),
                  Assembler(s, StopFlag(install_signals=False))):
        stages.start(stage)
    with DocumentPublisher(s) as pub:
        pub.publish_object(s.bucket, "uploads/report.pdf", dpi=100)
    result = decode(consume_all(s, s.topic("document-results"), 1, timeout_s=240)[0].value(), DocumentResult)
    assert result.status == "succeeded" and result.page_count == 3
    first, second, third = result.pages
    assert first.text_source == second.text_source == "text_layer"
    assert [d.text for d in first.detections] == LINES
    assert [d.text for d in second.detections] == ["Second page", "Total due: 1,204.50 EUR"]
    assert (first.width, first.height, first.dpi) == (827, 1170, 100) and "det_ms" not in first.timings_ms
    assert third.text_source is None and "det_ms" in third.timings_ms  # the scan was OCR'd
    assert "APPENDIX" in " ".join(d.text for d in third.detections)
