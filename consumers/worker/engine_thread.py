"""The engine thread: one engine per process, one batch in flight, and its time budget.

Predictors are not thread-safe and one in-flight batch keeps the accelerator busy while the
next is prepared, so the engine lives in a single thread. The poll thread never blocks on it.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ocrstream.engine import Engine, PageOcr, create_engine
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.settings import Settings

from .batching import BatchLimit
from .items import WorkItem

log = logging.getLogger(__name__)


def run_engine(engine: Engine, images: list[np.ndarray],
               limit: BatchLimit | None = None) -> list[PageOcr | BaseException]:
    """Run one micro-batch; never lose a page to a batch-level failure.

    On ``MemoryError`` (accelerator out of memory) the batch is halved and
    retried (and ``limit`` lowered for later batches); on any other error each
    page is retried alone, so one bad page fails only itself.

    Returns one :class:`PageOcr` or exception per image, in order.
    """
    try:
        return list(engine.ocr_batch(images))
    except MemoryError:
        if limit is not None:
            limit.out_of_memory(len(images))
        if len(images) == 1:
            return [OcrstreamError(ReasonCode.ENGINE_ERROR, "out of memory on a single page")]
        mid = len(images) // 2
        log.warning("engine out of memory on %d pages: splitting the batch", len(images))
        return run_engine(engine, images[:mid], limit) + run_engine(engine, images[mid:], limit)
    except Exception as exc:  # noqa: BLE001
        if len(images) == 1:
            return [exc]
        log.warning("engine failed on a batch of %d (%s): retrying page by page", len(images), exc)
        return [r for img in images for r in run_engine(engine, [img], limit)]


def _run_batch(engine: Engine, images: list[np.ndarray], limit: BatchLimit) -> list[PageOcr | BaseException]:
    before = limit.value
    results = run_engine(engine, images, limit)
    if limit.value >= before:
        limit.succeeded()
    return results


class EngineStuck(RuntimeError):
    """The engine overran its time budget; its thread cannot be interrupted, so the process must exit."""


class EngineThread:
    """Loads the engine and runs one batch at a time.

    Args:
        s: settings (``page_timeout_s``, ``batch_max_pages``).
        engine: an engine to use (default: ``create_engine(s)``, loaded in the thread).
    """

    def __init__(self, s: Settings, engine: Engine | None = None):
        self.s = s
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._loading: Future | None = self.pool.submit(lambda: engine or create_engine(s))
        self.engine: Engine | None = None
        self.limit = BatchLimit(s.batch_max_pages)
        self.batch: list[WorkItem] | None = None
        self.future: Future | None = None
        self.started = 0.0

    def load(self) -> Engine:
        """Wait for the engine (raises what loading raised: models missing, no CUDA...)."""
        if self._loading is not None:
            self.engine = self._loading.result()
            self._loading = None
        return self.engine

    @property
    def busy(self) -> bool:
        return self.future is not None

    def submit(self, batch: list[WorkItem]) -> None:
        self.batch, self.started = batch, time.monotonic()
        self.future = self.pool.submit(_run_batch, self.engine, [it.image for it in batch], self.limit)

    def budget_s(self) -> float:
        return self.s.page_timeout_s * len(self.batch or [])

    def remaining_s(self) -> float:
        """Seconds left of the in-flight batch's budget (0 when none runs)."""
        if self.future is None:
            return 0.0
        return max(0.0, self.budget_s() - (time.monotonic() - self.started))

    def over_budget(self) -> bool:
        """The batch in flight has run longer than ``page_timeout_s`` per page."""
        return (self.future is not None and not self.future.done()
                and time.monotonic() - self.started > self.budget_s())

    def take(self, wait_s: float = 0.0) -> tuple[list[WorkItem], list, float] | None:
        """``(batch, results, seconds)`` once the batch is done (waiting up to ``wait_s``), else None."""
        if self.future is None:
            return None
        if not self.future.done():
            if wait_s <= 0:
                return None
            try:
                self.future.result(timeout=wait_s)
            except TimeoutError:
                return None
        results = self.future.result()
        batch, seconds = self.batch, time.monotonic() - self.started
        self.batch, self.future = None, None
        return batch, results, seconds

    def abandon(self) -> list[WorkItem]:
        """Give up on the batch in flight (its thread stays stuck until the process exits)."""
        batch, self.batch, self.future = self.batch or [], None, None
        return batch

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
