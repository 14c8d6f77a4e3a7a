"""Fetch side of the worker: accepted records, their download + render, and the time budgets.

Pages are prepared in a small thread pool while the engine works on the previous batch.
A download over ``OCRSTREAM_DOWNLOAD_TIMEOUT_S`` fails its page with ``storage_timeout``, a
render over ``OCRSTREAM_RENDER_TIMEOUT_S`` with ``render_timeout``; the partition goes on. A
Python thread cannot be interrupted, so the stuck thread is abandoned; when every thread of
the pool is stuck a fresh pool replaces it (the stuck threads end with their call or the process).

Prepares start in lane order, not arrival order: a thread takes the waiting page of the
``interactive`` lane first (:data:`topology.pages.LANES`), so an interactive page consumed
behind a burst of batch pages is rendered next, not after them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from confluent_kafka import Message, TopicPartition

from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.settings import Settings
from ocrstream.storage import ObjectStore
from schemas import PageTask, decode

from topology.pages import LANES

from ..pages import SourceCache, prepare_page
from .items import WorkItem

log = logging.getLogger(__name__)


class Prefetch:
    """The queue of consumed page tasks not yet in a batch.

    Args:
        s: settings (``prepare_threads``, budgets).
        stop: set on shutdown (aborts storage retries).
    """

    def __init__(self, s: Settings, stop: threading.Event):
        self.s = s
        self.stop = stop
        self.cache = SourceCache(ObjectStore(s), s)
        self.pool = ThreadPoolExecutor(s.prepare_threads, thread_name_prefix="prepare")
        self.queue: deque[WorkItem] = deque()
        self.stuck = 0  # abandoned threads of the current pool
        self.renderer_stuck = False  # a PDF render over budget: it holds MuPDF's lock
        # Prepares not started yet, by (lane rank, arrival); each has one _run_next task in the pool.
        self._waiting: list[tuple[int, int, WorkItem, Future]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def accept(self, msg: Message, epoch: int, attempts: int, lane: str = "batch") -> WorkItem:
        """Queue a record of ``lane``: decode it and start its download + render (unless it cannot run)."""
        item = WorkItem(msg=msg, received=time.monotonic(), epoch=epoch, attempts=attempts, lane=lane)
        try:
            item.task = decode(msg.value(), PageTask)
        except OcrstreamError as exc:
            item.bad = exc
        else:
            if attempts >= self.s.max_page_attempts:
                item.error = OcrstreamError(
                    ReasonCode.WORKER_CRASH, f"{attempts} engine attempts on this page ended the worker process "
                    f"(crash, kill or engine timeout); limit OCRSTREAM_MAX_PAGE_ATTEMPTS={self.s.max_page_attempts}")
            else:
                self._submit(item)
        self.queue.append(item)
        return item

    def _submit(self, item: WorkItem) -> None:
        item.future = Future()
        with self._lock:
            heapq.heappush(self._waiting, (LANES.index(item.lane), next(self._seq), item, item.future))
        self.pool.submit(self._run_next)

    def _run_next(self) -> None:
        """In a pool thread: prepare the first waiting page in lane order (any page's task may run
        it: one task was submitted per waiting page)."""
        with self._lock:
            if not self._waiting:
                return
            _, _, item, future = heapq.heappop(self._waiting)
        if not future.set_running_or_notify_cancel():  # cancelled while it waited (revoke, clear)
            return
        try:
            future.set_result(prepare_page(self.cache, item.task, self.s, self.stop, item.on_phase))
        except BaseException as exc:  # noqa: BLE001 - the page's failure, collected by WorkItem.settle
            future.set_exception(exc)

    def enforce_budgets(self) -> None:
        """Fail pages whose download or render is over its budget (see module docstring)."""
        now = time.monotonic()
        for item in self.queue:
            if item.future is None or item.future.done() or item.phase == "queued":
                continue
            budget, code = ((self.s.download_timeout_s, ReasonCode.STORAGE_TIMEOUT) if item.phase == "download"
                            else (self.s.render_timeout_s, ReasonCode.RENDER_TIMEOUT))
            if now - item.phase_started > budget:
                log.error("page %s/%d: %s over its %.0fs budget", item.task.document_id, item.task.page_number,
                          item.phase, budget)
                item.error = OcrstreamError(code, f"{item.phase} of page {item.task.page_number} exceeded {budget:.0f}s")
                item.future = None
                self.stuck += 1
                if item.phase == "render" and item.task.kind == "pdf":
                    self.renderer_stuck = True
        if self.stuck >= self.s.prepare_threads:
            log.error("all %d prepare threads are stuck: starting a fresh pool", self.stuck)
            old, self.pool, self.stuck = self.pool, ThreadPoolExecutor(self.s.prepare_threads,
                                                                       thread_name_prefix="prepare"), 0
            old.shutdown(wait=False, cancel_futures=True)  # its tasks that had not started
            with self._lock:
                waiting = len(self._waiting)
            for _ in range(waiting):  # the pages still waiting get their tasks in the fresh pool
                self.pool.submit(self._run_next)

    def take_failed(self) -> list[WorkItem]:
        """Remove and return the items that skip the engine (invalid records, failed prepares, pages
        read from their text layer)."""
        failed, keep = [], deque()
        for item in self.queue:
            item.settle()
            (failed if item.skips_engine() else keep).append(item)
        if failed:
            self.queue = keep
        return failed

    def ready(self) -> list[WorkItem]:
        return [it for it in self.queue if it.ready()]

    def remove(self, items: list[WorkItem]) -> None:
        ids = {id(it) for it in items}
        self.queue = deque(it for it in self.queue if id(it) not in ids)

    def drop(self, partitions: list[TopicPartition]) -> None:
        """Forget the queued pages of revoked/lost partitions (their next owner re-reads them)."""
        gone = {(p.topic, p.partition) for p in partitions}
        keep = deque()
        for item in self.queue:
            if item.tp in gone:
                if item.future is not None:
                    item.future.cancel()
            else:
                keep.append(item)
        self.queue = keep

    def clear(self) -> None:
        for item in self.queue:
            if item.future is not None:
                item.future.cancel()
        self.queue.clear()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
