"""The default engine: PP-OCRv6 from ONNX files on OpenVINO (x86-64 CPU) or ONNX Runtime, batched
across pages. Every engine test runs on both runtimes."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from ocrstream.documents import open_pdf, render_pdf_page
from ocrstream.engine import create_engine
from ocrstream.engine.onnx import REC_MIN_WIDTH, REC_STRIDE, REC_WIDTH_STEP, rec_width
from ocrstream.settings import Settings

from conftest import make_pdf


@pytest.mark.parametrize("step", [REC_STRIDE, REC_WIDTH_STEP])  # one crop per call (CPU), batches (GPU)
@given(ratio=st.floats(min_value=0.05, max_value=200))
def test_rec_width_is_a_bucket_that_fits_the_crop(ratio, step):
    w = rec_width(ratio, step=step)
    assert w % step == 0 and w >= REC_MIN_WIDTH
    assert w >= 48 * ratio - 1e-6  # the crop fits without being squeezed
    assert w < max(REC_MIN_WIDTH, 48 * ratio) + step  # and wastes less than one step


RUNTIMES = ["onnxruntime", "openvino"]


@pytest.fixture(scope="module", params=[*RUNTIMES, "auto"])
def engine(request):
    from ocrstream.engine import resolve_runtime

    s = Settings(engine=request.param)
    det, rec = resolve_runtime(s)
    e = create_engine(s)
    assert e.info.name == (det if det == rec else f"{det}+{rec}")
    return e


def test_auto_is_openvino_detection_on_an_x86_64_cpu_and_onnxruntime_on_cuda(monkeypatch):
    import platform

    from ocrstream.engine import resolve_runtime

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert resolve_runtime(Settings()) == ("openvino", "onnxruntime")
    assert resolve_runtime(Settings(engine_device="cuda:0")) == ("onnxruntime", "onnxruntime")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert resolve_runtime(Settings()) == ("onnxruntime", "onnxruntime")
    assert resolve_runtime(Settings(engine="paddle")) == ("paddle", "paddle")
    with pytest.raises(ValueError, match="CPU"):
        create_engine(Settings(engine="openvino", engine_device="cuda:0"))


@pytest.mark.slow
def test_both_runtimes_read_the_same_text_on_the_sample_documents(tmp_path):
    """Same ONNX files, same pre- and post-processing: the same lines, boxes within a pixel."""
    from devtools.samples import make_samples
    from ocrstream.documents import decode_image_page, inspect

    pages = []
    for path in make_samples(tmp_path):
        data = path.read_bytes()
        info = inspect(data, path.name, max_pages=10, max_page_pixels=10**8)
        for n in range(1, info.page_count + 1):
            pages.append(render_pdf_page(open_pdf(data), n, 150, 10**8) if info.kind == "pdf"
                         else decode_image_page(data, n, 10**8))
    assert len(pages) == 9
    onnx, openvino = (create_engine(Settings(engine=r)).ocr_batch(pages) for r in RUNTIMES)
    for a, b in zip(onnx, openvino):
        assert [line.text for line in a.lines] == [line.text for line in b.lines]
        assert all(abs(x - y) <= 1.0 for la, lb in zip(a.lines, b.lines)
                   for pa, pb in zip(la.polygon, lb.polygon) for x, y in zip(pa, pb))
    assert sum(len(p.lines) for p in onnx) > 100


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


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_batched_detection_of_same_size_pages_equals_per_page(runtime):
    # The GPU path (det_batch_size > 1) forced on CPU: same-size pages share one detection call.
    engine = create_engine(Settings(det_batch_size=4, engine=runtime))
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



@pytest.mark.slow
def test_int8_detection_is_built_once_cached_and_reads_the_same_text(tmp_path, monkeypatch):
    """OCRSTREAM_DET_INT8 (ocrstream/engine/quantize.py), calibrated on 4 pages instead of 24 so
    that the test stays short: built into the cache on first use, found there the second time."""
    pytest.importorskip("nncf", reason="`pip install -e '.[int8]'` (part of the test extra)")
    from ocrstream.engine import quantize

    monkeypatch.setattr(quantize, "CALIBRATION_PAGES", 4)
    s = Settings(engine="openvino", det_int8=True, model_cache_dir=tmp_path)
    int8 = create_engine(s)
    assert "int8" in int8.info.det_model
    (built,) = tmp_path.glob("*.xml")
    mtime = built.stat().st_mtime_ns
    assert create_engine(s).info.det_model == int8.info.det_model and built.stat().st_mtime_ns == mtime
    page = _page(["Invoice 2291", "Total 18.20"])
    assert [line.text for line in int8.ocr_batch([page])[0].lines] == \
        [line.text for line in create_engine(Settings(engine="openvino")).ocr_batch([page])[0].lines]
    with pytest.raises(ValueError, match="openvino"):
        create_engine(Settings(engine="onnxruntime", det_int8=True))
