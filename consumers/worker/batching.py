"""Micro-batching: which ready pages go to the engine together, and how many.

A batch closes when ``batch_limit`` pages are ready or the oldest ready page has waited
``OCRSTREAM_BATCH_MAX_WAIT_MS``. A page with earlier attempts that ended a worker process
goes alone (see :mod:`.attempts`): if it is the poison, it takes down no other page again.

Priority lanes (:mod:`topology.pages`): pages of the ``interactive`` lane go first, in a batch
of their own (no batch-lane page rides along to lengthen it), which starts as soon as one is
ready, without waiting ``OCRSTREAM_BATCH_MAX_WAIT_MS`` for company. While an interactive page
is still being downloaded and rendered, no batch-lane batch starts (for up to
:data:`INTERACTIVE_PREPARE_WAIT_S`): the engine would otherwise take a whole batch of batch pages
just before it is ready. A batch already in the engine is never interrupted, so an interactive
page waits at most for the batch in the engine (``OCRSTREAM_BATCH_MAX_PAGES`` pages) and then its own.
"""

from __future__ import annotations

import logging
import time

from .items import WorkItem

log = logging.getLogger(__name__)

INTERACTIVE_PREPARE_WAIT_S = 5.0
"""How long the engine may stay idle for an interactive page still being prepared, from its
poll: a download and a 150-DPI render take 0.1-1 s; a prepare slower than this is stuck or
slow (its own budgets fail it later) and the batch lane goes on meanwhile."""


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


def next_batch(ready: list[WorkItem], max_pages: int, max_wait_ms: float,
               preparing: list[WorkItem] = ()) -> list[WorkItem]:
    """The pages to send to the engine now (empty: wait for more).

    Args:
        ready: prepared pages in arrival order.
        max_pages: the current :class:`BatchLimit` value.
        max_wait_ms: how long the oldest ready batch-lane page may wait for company.
        preparing: pages consumed and not prepared yet (only their lane and poll time count).
    """
    if not ready:
        return []
    # A page with earlier attempts goes alone: it may be the page that ended the last process.
    interactive = [it for it in ready if it.lane == "interactive"]
    if interactive:  # first, and at once: an interactive page waits for no company
        return [it for it in interactive if it.attempts > 0][:1] or interactive[:max_pages]
    retried = [it for it in ready if it.attempts > 0]
    if retried:
        return retried[:1]
    now = time.monotonic()
    if any(it.lane == "interactive" and now - it.received < INTERACTIVE_PREPARE_WAIT_S for it in preparing):
        return []  # the engine stays free for it
    oldest_wait_ms = (now - min(it.received for it in ready)) * 1000
    if len(ready) < max_pages and oldest_wait_ms < max_wait_ms:
        return []
    return ready[:max_pages]
