"""Micro-batching: which ready pages go to the engine together, and how many.

A batch closes when ``batch_limit`` pages are ready or the oldest ready page has waited
``OCRSTREAM_BATCH_MAX_WAIT_MS``. A page with earlier attempts that ended a worker process
goes alone (see :mod:`.attempts`): if it is the poison, it takes down no other page again.
"""

from __future__ import annotations

import logging
import time

from .items import WorkItem

log = logging.getLogger(__name__)


class BatchLimit:
    """Pages per engine call, adapted to the accelerator's free memory.

    Starts at ``batch_max_pages``. An out-of-memory batch of *n* pages caps later
    batches at *n*/2 (the batch itself is split and retried by :func:`run_engine`);
    after ``grow_after`` batches in a row without running out of memory the cap grows
    by one page again, up to the maximum, so memory freed by another process on the
    same GPU is used again.
    """

    def __init__(self, maximum: int, grow_after: int = 50):
        self.maximum = maximum
        self.value = maximum
        self.grow_after = grow_after
        self._ok = 0

    def out_of_memory(self, pages: int) -> None:
        """A batch of ``pages`` pages ran out of memory (called from the engine thread)."""
        new = max(1, min(self.value, pages // 2))
        if new < self.value:
            log.warning("out of memory on %d pages: batches capped at %d pages", pages, new)
        self.value, self._ok = new, 0

    def succeeded(self) -> None:
        """A whole batch ran without running out of memory."""
        self._ok += 1
        if self.value < self.maximum and self._ok >= self.grow_after:
            self.value, self._ok = self.value + 1, 0


def next_batch(ready: list[WorkItem], max_pages: int, max_wait_ms: float) -> list[WorkItem]:
    """The pages to send to the engine now (empty: wait for more).

    Args:
        ready: prepared pages in arrival order.
        max_pages: the current :class:`BatchLimit` value.
        max_wait_ms: how long the oldest ready page may wait for company.
    """
    if not ready:
        return []
    retried = [it for it in ready if it.attempts > 0]
    if retried:
        return retried[:1]  # alone: it may be the page that ended the last process
    oldest_wait_ms = (time.monotonic() - min(it.received for it in ready)) * 1000
    if len(ready) < max_pages and oldest_wait_ms < max_wait_ms:
        return []
    return ready[:max_pages]
