"""The default engine: PP-OCRv6 on ONNX Runtime, batched across pages."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from ocrstream.documents import open_pdf, render_pdf_page
from ocrstream.engine import create_engine
from ocrstream.engine.onnx import REC_MIN_WIDTH, REC_WIDTH_STEP, rec_width
from ocrstream.settings import Settings

from conftest import make_pdf


@given(st.floats(min_value=0.05, max_value=200))
def test_rec_width_is_a_bucket_that_fits_the_crop(ratio):
    w = rec_width(ratio)
    assert w % REC_WIDTH_STEP == 0 and w >= REC_MIN_WIDTH
    assert w >= 48 * ratio - 1e-6  # the crop fits without being squeezed
    assert w < max(REC_MIN_WIDTH, 48 * ratio) + REC_WIDTH_STEP  # and wastes less than one step


@pytest.fixture(scope="module")
def engine():
    return create_engine(Settings())


def _page(lines, size=(420, 200)):
    return render_pdf_page(open_pdf(make_pdf([lines], size=size, fontsize=16)), 1, 150, 10**8)


def test_batch_result_equals_per_page_results(engine):
    pages = [_page(["Short", "A much longer line of text, 12345"]), _page(["Ledger 2024", "Net total 99.50"], (360, 160)),
             _page(["x"], (200, 80))]
    batched = engine.ocr_batch(pages)
    single = [engine.ocr_batch([p])[0] for p in pages]
    assert len(batched) == 3
    for b, s in zip(batched, single):
        assert [(l.text, l.polygon) for l in b.lines] == [(l.text, l.polygon) for l in s.lines]
    texts = [l.text for l in batched[0].lines]
    assert texts[0] == "Short" and "12345" in texts[1]
    assert batched[1].timings_ms["det_ms"] > 0


def test_blank_page_and_empty_batch(engine):
    import numpy as np

    assert engine.ocr_batch([]) == []
    (blank,) = engine.ocr_batch([np.full((300, 400, 3), 255, np.uint8)])
    assert blank.lines == []


def test_batched_detection_of_same_size_pages_equals_per_page():
    # The GPU path (det_batch_size > 1) forced on CPU: same-size pages share one detection call.
    engine = create_engine(Settings(det_batch_size=4))
    assert engine.det_batch_size == 4
    pages = [_page(["Invoice 2291", "Total 18.20"]), _page(["Receipt 7", "Cash 5.00"]), _page(["Ledger", "Net 99.50"])]
    batched = engine.ocr_batch(pages)
    single = [engine.ocr_batch([p])[0] for p in pages]
    for b, s in zip(batched, single):
        assert [l.text for l in b.lines] == [l.text for l in s.lines]
        assert all(abs(x - y) <= 1.0 for lb, ls in zip(b.lines, s.lines)
                   for pb, ps in zip(lb.polygon, ls.polygon) for x, y in zip(pb, ps))
    assert "Invoice" in batched[0].lines[0].text


def test_detection_is_one_page_per_call_on_cpu_by_default(engine):
    assert engine.det_batch_size == 1
