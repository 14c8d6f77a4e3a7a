"""OCR worker: a consumer-group member that turns page tasks into page results.

Pipeline inside one process (all Kafka calls on the poll thread):

1. poll: the consumer keeps polling the whole time, so a long engine batch
   never exceeds ``max.poll.interval.ms``; when more than
   ``max_inflight_pages`` are in flight the assigned partitions are paused
   (back-pressure) and resumed once half have drained.
2. prepare: download + render of each page in a small thread pool, overlapping
   with inference of the current batch.
3. batch: when ``batch_max_pages`` pages are ready, or the oldest ready page has
   waited ``batch_max_wait_ms``, the batch goes to the engine thread (one engine
   per process: predictors are not thread-safe, and one in-flight batch keeps
   the accelerator busy while the next is prepared).
4. publish: page results are produced and the covered offsets committed only
   after the broker acknowledged them (or in one transaction), see
   :mod:`consumers.delivery`.

Rebalances (cooperative-sticky): on revoke the in-flight batch is finished and
published and its offsets committed, queued pages of revoked partitions are
dropped (their new owner re-reads them); on lost, state is dropped without a commit.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from ocrstream.engine import Engine, PageOcr, create_engine
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream import metrics as m
from ocrstream.kafka import make_consumer, make_producer
from ocrstream.settings import Settings
from ocrstream.storage import ObjectStore
from schemas import Detection, PageResult, PageTask, WorkerMetrics, decode, encode
from topology.topics import topic_specs

from .common import OffsetTracker, StopFlag, dead_letter, dead_letter_headers, error_of, now_ms
from .delivery import Delivery, Output
from .pages import SourceCache, prepare_page

log = logging.getLogger(__name__)

STAGE = "worker"


@dataclass
class WorkItem:
    """One consumed page-task record on its way through the worker."""

    msg: Message
    received: float  # time.monotonic() at poll
    task: PageTask | None = None
    bad: OcrstreamError | None = None  # the record itself is invalid -> dead letter
    future: Future | None = None  # prepare_page future
    image: np.ndarray | None = None
    error: BaseException | None = None  # the page failed -> failed page result
    shape: tuple[int, int] = (0, 0)  # (height, width) pixels of the rendered page
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tp(self) -> tuple[str, int]:
        return self.msg.topic(), self.msg.partition()

    def ready(self) -> bool:
        return self.future is None or self.future.done()

    def settle(self) -> None:
        """Collect the prepare result (image or error) once its future is done."""
        if self.future is None:
            return
        try:
            self.image, t = self.future.result()
            self.shape = self.image.shape[:2]
            self.timings.update(t)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a failed page result
            self.error = exc
        self.future = None


@dataclass
class WorkerStats:
    """Counters since the last metrics sample (read by the metrics reporter)."""

    pages: int = 0
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    batch_latency_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    def reset(self) -> "WorkerStats":
        snapshot = WorkerStats(self.pages, self.batches, self.batch_sizes, self.batch_latency_ms, self.errors)
        self.pages, self.batches, self.batch_sizes, self.batch_latency_ms, self.errors = 0, 0, [], [], Counter()
        return snapshot


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


class OcrWorker:
    """The OCR worker loop (see module docstring).

    Args:
        s: settings.
        engine: an engine to use (default: ``create_engine(s)``, loaded in the engine thread).
        stop: stop flag (default: installs SIGTERM/SIGINT handlers).
    """

    def __init__(self, s: Settings, engine: Engine | None = None, stop: StopFlag | None = None):
        self.s = s
        self.stop = stop or StopFlag()
        self.engine_pool = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.engine_future: Future = self.engine_pool.submit(lambda: engine or create_engine(s))
        self.engine: Engine | None = None
        self.prepare_pool = ThreadPoolExecutor(s.prepare_threads, thread_name_prefix="prepare")
        self.cache = SourceCache(ObjectStore(s), s)
        self.lag: dict[str, int] = {}
        self.consumer = make_consumer(s, s.group(STAGE), **{
            "statistics.interval.ms": int(s.metrics_interval_s * 1000), "stats_cb": self._on_stats})
        self.delivery = Delivery(s, self.consumer, STAGE)
        # Metrics go out of band: in exactly-once mode the delivery producer only writes inside transactions.
        self.metrics_producer = make_producer(s, **{"linger.ms": 100})
        self.gpu = m.GpuSampler()
        self.proc = m.ProcessSampler()
        self.next_sample = time.monotonic() + s.metrics_interval_s
        self.last_sample = time.monotonic()
        self.http = m.serve_if_configured(s.http_port, self.ready)
        self.tracker = OffsetTracker()
        self.queue: deque[WorkItem] = deque()
        self.batch: list[WorkItem] | None = None
        self.batch_future: Future | None = None
        self.batch_started = 0.0
        self.paused = False
        self.stats = WorkerStats()
        self.batch_limit = BatchLimit(s.batch_max_pages)
        self.max_result_bytes = next(int(t.config["max.message.bytes"]) for t in topic_specs()
                                     if t.name == "page-results")
        self.assigned: set[tuple[str, int]] = set()
        self.engine_stuck = False

    def ready(self) -> bool:
        """Engine loaded and at least one partition assigned (``/readyz``)."""
        return self.engine is not None and bool(self.assigned)

    def _on_stats(self, stats_json: str) -> None:
        self.lag = m.parse_lag(stats_json)

    # --- rebalance callbacks (run inside poll(), on the poll thread) ----------------
    def _on_assign(self, consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_assign(partitions)
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        # librdkafka keeps a partition's pause flag through revoke/lost and re-assignment
        # (librdkafka #1849): a partition paused by back-pressure when it was lost came back
        # paused and was never fetched again (broker-restart test). Set it explicitly.
        if self.paused:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)
        log.info("assigned %s", [p.partition for p in partitions])

    def _on_revoke(self, consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoking %s: finishing the in-flight batch", [p.partition for p in partitions])
        self._wait_for_batch()
        self._publish_failures()
        self._drop(partitions)
        consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer, partitions: list[TopicPartition]) -> None:
        log.warning("lost %s: dropping their work without commit", [p.partition for p in partitions])
        self._drop(partitions)
        consumer.incremental_unassign(partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        for topic, partition in gone:  # another member reports their lag now
            try:
                m.CONSUMER_LAG.remove(topic, str(partition))
            except KeyError:
                pass
        self.assigned -= gone
        keep = deque()
        for item in self.queue:
            if item.tp in gone:
                if item.future is not None:
                    item.future.cancel()
            else:
                keep.append(item)
        self.queue = keep
        self.tracker.forget(partitions)

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        """Poll, batch, publish, commit until stopped; then shut down gracefully."""
        self.engine = self.engine_future.result()  # fail fast if models cannot load
        self.engine_future = None
        self.consumer.subscribe([self.s.topic("pages")], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        try:
            while not self.stop.is_set():
                self.step()
            self._shutdown()
            if self.engine_stuck:
                raise EngineStuck("the engine thread is stuck; restart the process")
        finally:
            self.prepare_pool.shutdown(wait=False, cancel_futures=True)
            self.engine_pool.shutdown(wait=False, cancel_futures=True)
            self.metrics_producer.flush(5)
            if self.http:
                self.http.close()

    def step(self) -> None:
        """One iteration: finish/publish, start a batch, apply back-pressure, poll."""
        self._check_engine_budget()
        self._finish_batch(wait=False)
        self._publish_failures()
        self._maybe_start_batch()
        self._backpressure()
        if time.monotonic() >= self.next_sample:
            self.publish_metrics()
        busy = bool(self.queue) or self.batch_future is not None
        msg = self.consumer.poll(0.02 if busy else 0.25)
        if msg is None:
            return
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", msg.error())
            return
        self._accept(msg)

    def _accept(self, msg: Message) -> None:
        m.MESSAGES_CONSUMED.labels(STAGE).inc()
        self.tracker.add(msg.topic(), msg.partition(), msg.offset())
        item = WorkItem(msg=msg, received=time.monotonic())
        try:
            item.task = decode(msg.value(), PageTask)
        except OcrstreamError as exc:
            item.bad = exc
        else:
            item.future = self.prepare_pool.submit(prepare_page, self.cache, item.task, self.s, self.stop.event)
        self.queue.append(item)

    def _backpressure(self) -> None:
        inflight = self.tracker.inflight()
        assignment = [TopicPartition(t, p) for t, p in self.assigned]
        if not self.paused and inflight >= self.s.max_inflight_pages and assignment:
            self.consumer.pause(assignment)
            self.paused = True
        elif self.paused and inflight <= self.s.max_inflight_pages // 2:
            if assignment:
                self.consumer.resume(assignment)
            self.paused = False
        m.INFLIGHT_PAGES.set(inflight)
        m.PAUSED_PARTITIONS.set(len(assignment) if self.paused else 0)

    def _publish_failures(self) -> None:
        """Dead letters and failed pages skip the engine: publish them as soon as they are known."""
        failed = []
        keep = deque()
        for item in self.queue:
            if item.ready():
                item.settle()
            (failed if item.bad is not None or item.error is not None else keep).append(item)
        if failed:
            self.queue = keep
            self._publish(failed, [None] * len(failed))

    def _maybe_start_batch(self) -> None:
        if self.batch_future is not None:
            return
        ready = [it for it in self.queue if it.ready()]
        if not ready:
            return
        oldest_wait_ms = (time.monotonic() - min(it.received for it in ready)) * 1000
        max_pages = self.batch_limit.value
        m.BATCH_LIMIT.set(max_pages)
        if len(ready) < max_pages and oldest_wait_ms < self.s.batch_max_wait_ms:
            return
        batch = ready[:max_pages]
        for it in batch:
            it.settle()
        ids = {id(it) for it in batch}
        self.queue = deque(it for it in self.queue if id(it) not in ids)
        good = [it for it in batch if it.error is None]
        bad = [it for it in batch if it.error is not None]
        if bad:
            self._publish(bad, [None] * len(bad))
        if not good:
            return
        self.batch = good
        self.batch_started = time.monotonic()
        self.batch_future = self.engine_pool.submit(_run_batch, self.engine, [it.image for it in good],
                                                  self.batch_limit)

    def _wait_for_batch(self) -> None:
        """Finish the in-flight batch, waiting at most for the rest of its engine budget."""
        if self.batch_future is None:
            return
        remaining = self.s.page_timeout_s * len(self.batch) - (time.monotonic() - self.batch_started)
        wait_futures([self.batch_future], timeout=max(0.0, remaining) + 0.1)
        self._check_engine_budget()
        self._finish_batch(wait=False)

    def _check_engine_budget(self) -> None:
        """Engine watchdog: a batch over ``page_timeout_s`` per page fails its pages with
        ``engine_timeout`` (published and committed, so the partition moves on) and stops
        the worker, whose stuck engine thread only a process restart can end."""
        if self.batch_future is None or self.batch_future.done():
            return
        budget_s = self.s.page_timeout_s * len(self.batch)
        if time.monotonic() - self.batch_started <= budget_s:
            return
        batch, self.batch, self.batch_future = self.batch, None, None
        log.error("engine exceeded %.0fs on a batch of %d pages: failing them and restarting", budget_s, len(batch))
        timeout = OcrstreamError(ReasonCode.ENGINE_TIMEOUT,
                                 f"engine exceeded {self.s.page_timeout_s:.0f}s per page on a batch of {len(batch)}")
        self._publish(batch, [timeout] * len(batch))
        self.engine_stuck = True
        self.stop.set()

    def _finish_batch(self, wait: bool) -> None:
        if self.batch_future is None or (not wait and not self.batch_future.done()):
            return
        results = self.batch_future.result()
        batch, self.batch, self.batch_future = self.batch, None, None
        latency = (time.monotonic() - self.batch_started) * 1000
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(batch))
        self.stats.batch_latency_ms.append(latency)
        m.BATCH_SIZE.observe(len(batch))
        m.BATCH_LATENCY.observe(latency / 1000)
        for item in batch:
            item.image = None  # release pixels before publishing
        self._publish(batch, results)

    # --- outputs ---------------------------------------------------------------------------
    def _page_result(self, item: WorkItem, ocr: PageOcr | BaseException | None) -> Output:
        task = item.task
        assert task is not None
        error = item.error or (ocr if isinstance(ocr, BaseException) else None)
        engine_info = self.engine.info
        if error is not None:
            err = error_of(error)
            self.stats.errors[err.code] += 1
            result = PageResult(document_id=task.document_id, source=task.source, page_number=task.page_number,
                                page_count=task.page_count, status="failed", error=err, width=0, height=0,
                                dpi=task.dpi, engine=engine_info, worker_id=self.s.worker_id,
                                submitted_at=task.submitted_at, completed_at=now_ms(), timings_ms=item.timings)
        else:
            h, w = item.shape
            assert isinstance(ocr, PageOcr)
            result = PageResult(
                document_id=task.document_id, source=task.source, page_number=task.page_number,
                page_count=task.page_count, width=w, height=h, dpi=task.dpi,
                detections=[Detection(text=l.text, polygon=l.polygon, confidence=l.confidence) for l in ocr.lines],
                engine=engine_info, worker_id=self.s.worker_id, submitted_at=task.submitted_at,
                completed_at=now_ms(), timings_ms={**item.timings, **ocr.timings_ms},
            )
        value = encode(result)
        if len(value) > self.max_result_bytes:
            err = OcrstreamError(ReasonCode.RESULT_TOO_LARGE, f"page result is {len(value)} bytes")
            result = result.model_copy(update={"status": "failed", "error": error_of(err), "detections": []})
            value = encode(result)
        return Output(self.s.topic("page-results"), task.document_id, value)

    def _publish(self, items: list[WorkItem], results: list) -> None:
        outputs: list[Output] = []
        for item, ocr in zip(items, results):
            if item.bad is not None:
                dl = dead_letter(item.msg, item.bad, STAGE)
                self.stats.errors[dl.reason] += 1
                m.DEAD_LETTERS.labels(STAGE, dl.reason).inc()
                outputs.append(Output(self.s.topic("dead-letters"), dl.key, encode(dl), dead_letter_headers(dl)))
            else:
                outputs.append(self._page_result(item, ocr))
                self.stats.pages += 1
                failed = item.error is not None or isinstance(ocr, BaseException)
                m.PAGES_PROCESSED.labels("failed" if failed else "succeeded").inc()
                m.PAGE_LATENCY.observe(max(0.0, (now_ms() - item.task.submitted_at) / 1000))
        for item in items:
            if item.tp in self.assigned:
                self.tracker.done(item.msg.topic(), item.msg.partition(), item.msg.offset())
        offsets = self.tracker.committable()
        try:
            self.delivery.publish(outputs, offsets)
        except KafkaException as exc:
            # A commit for a partition revoked meanwhile fails; its new owner replays it (at-least-once).
            log.warning("commit failed: %s", exc)
            return
        self.tracker.mark_committed(offsets)
        for out in outputs:
            m.MESSAGES_PRODUCED.labels(STAGE, out.topic).inc()

    def publish_metrics(self) -> WorkerMetrics:
        """Publish a :class:`WorkerMetrics` sample (figures since the last one) to the metrics topic."""
        now = time.monotonic()
        interval = max(1e-6, now - self.last_sample)
        self.last_sample, self.next_sample = now, now + self.s.metrics_interval_s
        st = self.stats.reset()
        cpu, rss = self.proc.sample()
        lat = sorted(st.batch_latency_ms)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

        sample = WorkerMetrics(
            host=m.hostname(), worker_id=self.s.worker_id, stage=STAGE, at=now_ms(), interval_s=round(interval, 3),
            gpus=self.gpu.sample(), cpu_pct=cpu, rss_bytes=rss, pages=st.pages, batches=st.batches,
            mean_batch_size=round(sum(st.batch_sizes) / len(st.batch_sizes), 2) if st.batch_sizes else 0.0,
            pages_per_s=round(st.pages / interval, 3), batch_latency_ms_p50=pct(0.5), batch_latency_ms_p95=pct(0.95),
            errors=dict(st.errors), lag=dict(self.lag),
        )
        self.metrics_producer.produce(self.s.topic("metrics"), encode(sample), self.s.worker_id)
        self.metrics_producer.poll(0)
        return sample

    def _shutdown(self, deadline_s: float = 30.0) -> None:
        """Stop fetching, finish the in-flight batch (bounded), publish, commit, leave the group."""
        log.info("shutting down: finishing the in-flight batch")
        assignment = [TopicPartition(t, p) for t, p in self.assigned]
        if assignment:
            self.consumer.pause(assignment)
        if self.batch_future is not None:
            try:
                self.batch_future.result(timeout=deadline_s)
                self._finish_batch(wait=True)
            except TimeoutError:
                log.warning("in-flight batch did not finish within %.0fs: abandoned (it will be replayed)", deadline_s)
        for item in self.queue:
            if item.future is not None:
                item.future.cancel()
        self.queue.clear()
        self.delivery.close()
        self.consumer.close()  # commits nothing more (manual commits), leaves the group


def run_worker(s: Settings, stop: StopFlag | None = None) -> None:
    """Run one OCR worker until SIGTERM/SIGINT (or ``stop``).

    Exits the process with status 3 when the engine is stuck (see :class:`EngineStuck`):
    its thread cannot be interrupted, and a supervisor (``ocrstream run``, Kubernetes,
    compose ``restart``) starts a fresh process.
    """
    try:
        OcrWorker(s, stop=stop).run()
    except EngineStuck:
        logging.shutdown()
        os._exit(3)
