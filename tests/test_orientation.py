"""Page orientation: pages scanned sideways or upside down read like upright ones."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from devtools.samples import make_samples
from ocrstream.engine import create_engine
from ocrstream.engine.orientation import OrientingEngine, turn, unturn_point
from ocrstream.settings import Settings

from conftest import SHARED


@hsettings(max_examples=60, deadline=None)
@given(w=st.integers(2, 40), h=st.integers(2, 40), cw=st.sampled_from([0, 90, 180, 270]), data=st.data())
def test_a_point_of_the_turned_image_maps_back_to_the_same_pixel(w, h, cw, data):
    x, y = data.draw(st.integers(0, w - 1)), data.draw(st.integers(0, h - 1))
    image = np.zeros((h, w, 3), np.uint8)
    image[y, x] = 255
    turned = turn(image, cw)
    ty, tx = (int(v) for v in np.argwhere(turned[:, :, 0])[0])
    # the pixel's centre, turned and mapped back, is the original pixel's centre
    assert unturn_point(tx + 0.5, ty + 0.5, cw, w, h) == pytest.approx([x + 0.5, y + 0.5])


@pytest.fixture(scope="module")
def engine():
    return create_engine(Settings(engine_threads=1))


def _pages(tmp_path_factory) -> list[tuple[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("samples")
    memo = next(p for p in make_samples(out) if p.name == "memo-scan.jpg")
    pages = [("memo-scan.jpg", cv2.imread(str(memo)))]
    receipt = SHARED / "sroie-dev" / "051.jpg"
    if receipt.is_file():  # a real scan as well, where the shared data is present
        pages.append(("sroie 051", cv2.imread(str(receipt))))
    return pages


@pytest.mark.slow
def test_turned_pages_read_the_same_text_with_polygons_in_the_stored_grid(engine, tmp_path_factory):
    assert isinstance(engine, OrientingEngine)
    for name, upright in _pages(tmp_path_factory):
        first = engine.ocr_batch([upright])[0]
        assert first.rotation == 0 and "orientation_ms" not in first.timings_ms, f"{name}: upright costs nothing more"
        assert len(first.lines) >= 5
        # One batch with the page stored turned three ways (as a scanner would have saved it).
        stored = {cw: turn(upright, 360 - cw) for cw in (90, 180, 270)}
        results = engine.ocr_batch(list(stored.values()))
        for (cw, image), res in zip(stored.items(), results):
            assert res.rotation == cw, name
            assert [l.text for l in res.lines] == [l.text for l in first.lines], (name, cw)
            h, w = image.shape[:2]
            uh, uw = upright.shape[:2]
            for got, want in zip(res.lines, first.lines):
                # the upright polygon, placed in the stored (turned) image: where the text is there
                expect = [turned_point(x, y, cw, uw, uh) for x, y in want.polygon]
                assert all(abs(a - b) <= 1.0 for p, q in zip(got.polygon, expect) for a, b in zip(p, q)), (name, cw)
            assert res.timings_ms["orientation_ms"] > 0


def turned_point(x: float, y: float, cw: int, uw: int, uh: int) -> list[float]:
    """Where a point of the upright page (uw x uh) lies in the page stored turned by ``360 - cw``
    degrees clockwise (i.e. needing ``cw`` clockwise to be upright)."""
    if cw == 180:
        return [uw - x, uh - y]
    if cw == 90:  # stored = upright turned counter-clockwise by 90: x_s = y, y_s = uw - x
        return [y, uw - x]
    return [uh - y, x]  # cw == 270: stored = upright turned clockwise by 90


def test_orientation_off_reads_pages_as_stored():
    from ocrstream.engine.onnx import OnnxEngine

    assert not isinstance(create_engine(Settings(page_orientation="off")), OrientingEngine)
    assert isinstance(create_engine(Settings(page_orientation="off", engine="onnxruntime")), OnnxEngine)


@pytest.mark.integration
@pytest.mark.slow
def test_an_upside_down_scan_through_the_pipeline_reads_like_the_upright_one(settings, store, stages, tmp_path):
    from consumers.assembler import Assembler
    from consumers.splitter import Splitter
    from consumers.worker import OcrWorker
    from ocrstream.streaming import StopFlag
    from producers.publish import DocumentPublisher
    from schemas import DocumentResult, decode

    from conftest import consume_all

    memo = next(p for p in make_samples(tmp_path) if p.name == "memo-scan.jpg")
    upright = cv2.imread(str(memo))
    ok, flipped = cv2.imencode(".png", turn(upright, 180))
    store.put_bytes("uploads/memo.jpg", memo.read_bytes(), "image/jpeg")
    store.put_bytes("uploads/memo-upside-down.png", flipped.tobytes(), "image/png")
    for stage in (Splitter(settings, StopFlag(install_signals=False)),
                  OcrWorker(settings, stop=StopFlag(install_signals=False)),
                  Assembler(settings, StopFlag(install_signals=False))):
        stages.start(stage)
    with DocumentPublisher(settings) as pub:
        ids = {pub.publish_object(settings.bucket, "uploads/memo.jpg"): "upright",
               pub.publish_object(settings.bucket, "uploads/memo-upside-down.png"): "flipped"}
    results = {ids[m.key().decode()]: decode(m.value(), DocumentResult)
               for m in consume_all(settings, settings.topic("document-results"), 2, timeout_s=240)}
    up, down = results["upright"].pages[0], results["flipped"].pages[0]
    assert up.rotation is None and down.rotation == 180
    assert [d.text for d in down.detections] == [d.text for d in up.detections] and len(up.detections) >= 5
    assert down.timings_ms["orientation_ms"] > 0
