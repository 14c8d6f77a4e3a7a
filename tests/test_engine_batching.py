"""run_engine / BatchLimit: an out-of-memory batch is split and retried, never lost, and later
batches are capped; a page that breaks the engine fails alone. No Kafka needed."""

from __future__ import annotations

import numpy as np

from consumers.worker import BatchLimit, _run_batch, run_engine
from ocrstream.engine import PageOcr
from ocrstream.engine.base import TextLine
from ocrstream.engine.onnx import is_out_of_memory
from ocrstream.errors import OcrstreamError


class _MemoryBoundEngine:
    """Fails with MemoryError on batches of more than ``fits`` pages; labels each page by its
    first pixel so results can be checked against their inputs."""

    def __init__(self, fits: int, poison: int | None = None):
        self.fits, self.poison, self.calls = fits, poison, []

    def ocr_batch(self, images):
        self.calls.append(len(images))
        if len(images) > self.fits:
            raise MemoryError("CUDA out of memory")
        out = []
        for img in images:
            if self.poison is not None and int(img[0, 0, 0]) == self.poison:
                raise ValueError("engine cannot read this page")
            out.append(PageOcr(lines=[TextLine(str(int(img[0, 0, 0])), [[0, 0], [1, 0], [1, 1], [0, 1]], 1.0)]))
        return out


def _pages(n: int) -> list[np.ndarray]:
    return [np.full((4, 4, 3), i, np.uint8) for i in range(n)]


def test_out_of_memory_batch_is_split_and_every_page_comes_back_in_order():
    engine = _MemoryBoundEngine(fits=3)
    limit = BatchLimit(16)
    results = run_engine(engine, _pages(10), limit)
    assert [r.lines[0].text for r in results] == [str(i) for i in range(10)]
    assert engine.calls[:2] == [10, 5]  # halved on each failure
    assert limit.value <= 3  # later batches start no larger than what fits


def test_a_single_page_that_does_not_fit_fails_alone_with_a_reason_code():
    results = run_engine(_MemoryBoundEngine(fits=0), _pages(2), BatchLimit(8))
    assert all(isinstance(r, OcrstreamError) and r.code == "engine_error" for r in results)


def test_a_bad_page_fails_only_itself():
    results = run_engine(_MemoryBoundEngine(fits=8, poison=2), _pages(5))
    assert isinstance(results[2], ValueError)
    assert [r.lines[0].text for i, r in enumerate(results) if i != 2] == ["0", "1", "3", "4"]


def test_batch_limit_grows_back_after_clean_batches():
    limit = BatchLimit(8, grow_after=3)
    limit.out_of_memory(8)
    assert limit.value == 4
    engine = _MemoryBoundEngine(fits=100)
    for _ in range(3):
        _run_batch(engine, _pages(4), limit)
    assert limit.value == 5
    for _ in range(100):
        _run_batch(engine, _pages(4), limit)
    assert limit.value == 8  # never above the configured maximum


def test_onnxruntime_allocation_failures_are_recognised():
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory"))
    assert is_out_of_memory(RuntimeError("Failed to allocate memory for requested buffer of size 123"))
    assert not is_out_of_memory(RuntimeError("Invalid input shape"))
