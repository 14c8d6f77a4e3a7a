"""The OCR worker's loop: glue between fetch, batching, the engine thread and publishing.

Each step, on the poll thread (the only thread that calls Kafka):

1. engine budget: a batch over ``page_timeout_s`` per page cannot be interrupted. A single
   page over budget fails with ``engine_timeout`` (published and committed); a larger batch
   publishes nothing. Either way the process exits for a restart, and the pages that were in
   the batch run one by one in the next process (their in-flight marks, :mod:`.attempts`), so
   only the page that hangs fails, never other documents' pages of the same batch;
2. a finished batch is published (page results, then the commit: :mod:`ocrstream.streaming.delivery`);
3. pages that skip the engine (invalid records, failed or over-budget prepares, poison pages)
   are published;
4. a new batch starts when one is due (:mod:`.batching`), after its in-flight marks are durable;
5. back-pressure: partitions pause above ``max_inflight_pages`` and resume when half drained;
6. poll: one record is accepted and its download + render starts (:mod:`.fetch`).

Rebalances (cooperative-sticky): on revoke the in-flight batch is finished, published and
committed and queued pages of revoked partitions are dropped (their new owner re-reads
them); on lost, state is dropped without a commit, and a batch still in the engine may
publish its page results but never moves the commit position of a partition that was lost
(assignment epochs), even if the same partition was assigned again meanwhile.
"""

from __future__ import annotations

import logging
import os

from confluent_kafka import KafkaException, Message, TopicPartition

from ocrstream import metrics as m
from ocrstream import result_cache as rc
from ocrstream.engine import Engine
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import make_producer
from ocrstream.profiles import profile_settings
from ocrstream.settings import Settings
from ocrstream.streaming import FatalKafkaError, OffsetTracker, StageRuntime, StopFlag, run_stage
from schemas import WorkerMetrics
from topology import worker_group

from .attempts import PageAttempts
from .batching import next_batch
from .engine_thread import EngineStuck, EngineThread
from .fetch import Prefetch
from .items import WorkItem
from .results import STAGE, MetricsReporter, WorkerStats, outputs_for

log = logging.getLogger(__name__)

EXIT_ENGINE_STUCK = 3


class OcrWorker:
    """The OCR worker (see module docstring).

    A worker serves one model profile (``OCRSTREAM_PROFILE``, :mod:`ocrstream.profiles`): the
    profile's settings are applied over ``s`` here, before the engine is built, and it reads that
    profile's page topic in the profile's own group (``topology.worker_group``).

    Args:
        s: settings.
        engine: an engine to use (default: ``create_engine(s)``, loaded in the engine thread).
        stop: stop flag (default: installs SIGTERM/SIGINT handlers).

    Raises:
        ValueError: ``s.profile`` is not defined (settings validation normally refuses it first).
    """

    def __init__(self, s: Settings, engine: Engine | None = None, stop: StopFlag | None = None):
        s = profile_settings(s)  # its models, DPI and thresholds: before anything reads them
        self.s = s
        self.engine = EngineThread(s, engine)
        self.rt = StageRuntime(s, STAGE, [s.page_topic(s.profile)], stop=stop, on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost, on_rewind=self._on_rewind,
                               ready=lambda: self.engine.engine is not None, busy=self._busy, results_topic=None,
                               group=s.group(worker_group(s.profile)))
        self.stop = self.rt.stop
        self.fetch = Prefetch(s, self.stop.event)
        self.attempts = PageAttempts(s)
        self.tracker = OffsetTracker()
        self.epochs: dict[tuple[str, int], int] = {}
        self.stats = WorkerStats()
        self.metrics = MetricsReporter(s, make_producer(s, **{"linger.ms": 100}))
        self.engine_stuck = False
        if rc.enabled(s):  # to compare with the splitter's (a difference: every lookup misses)
            log.info("result cache: output fingerprint %s", rc.fingerprint_digest(s)[:12])

    def _busy(self) -> bool:
        return bool(self.fetch.queue) or self.engine.busy

    # --- rebalance callbacks (inside poll(), on the poll thread) ----------------------
    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            key = (p.topic, p.partition)
            self.epochs[key] = self.epochs.get(key, 0) + 1
        # Attempt counts first: a page must not run before we know whether it killed a process.
        try:
            self.attempts.restore([p.partition for p in partitions])
        except (OcrstreamError, KafkaException) as exc:
            # Running without the counts could let a poison page kill workers forever: restart.
            raise FatalKafkaError(f"in-flight marks of {[p.partition for p in partitions]} unreadable: {exc}") from exc

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        if not self.stop.is_set() and not self.engine_stuck:
            # Finish the batch within what is left of its budget, and never longer than a fraction of
            # max.poll.interval.ms: a batch still running then is dropped (its new owner re-reads it).
            wait_s = min(self.engine.remaining_s(), self.s.max_poll_interval_ms / 1000 / 4, 60.0)
            log.info("revoking %s: finishing the in-flight batch (up to %.0fs)", [p.partition for p in partitions],
                     wait_s)
            self._check_engine_budget()
            self._finish_batch(wait_s=max(0.0, wait_s))
            self._publish(self.fetch.take_failed(), None)
        self._on_lost(partitions)

    def _on_rewind(self, partitions: list[TopicPartition]) -> None:
        """An aborted transaction: drop what was consumed after the committed offsets. The attempt
        counts stay: they are durable and still true."""
        self._forget(partitions)

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)
        self.attempts.forget([p.partition for p in partitions])  # the next owner restores them

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:  # a batch still in the engine must not commit for these any more
            key = (p.topic, p.partition)
            self.epochs[key] = self.epochs.get(key, 0) + 1
        self.fetch.drop(partitions)
        self.tracker.forget(partitions)

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        """Poll, batch, publish, commit until stopped; then shut down gracefully.

        Raises:
            EngineStuck: the engine overran its budget (the caller exits the process).
            FatalKafkaError: see :mod:`ocrstream.streaming.loop`.
        """
        self.engine.load()  # fail fast if models cannot load
        self.rt.start()
        try:
            while not self.stop.is_set():
                self.step()
            self._shutdown()
            if self.engine_stuck:
                raise EngineStuck("the engine thread is stuck; restart the process")
        finally:
            self.fetch.close()
            self.engine.close()
            self.attempts.close()
            self.metrics.producer.flush(5)
            self.rt.close()

    def step(self) -> None:
        """One iteration (see module docstring)."""
        self._check_engine_budget()
        self._finish_batch()
        self.fetch.enforce_budgets()
        self._publish(self.fetch.take_failed(), None)
        if self.fetch.renderer_stuck and not self.engine_stuck:
            # A PDF render over budget holds MuPDF's lock for good: every later PDF page would wait
            # on it. Its page was failed above; restart the process like a stuck engine.
            log.error("a PDF render is stuck holding MuPDF: restarting")
            self.engine_stuck = True
            self.stop.set()
        if self.stop.is_set():
            return  # no new batch (and no new in-flight marks) once stopping
        self._maybe_start_batch()
        self._backpressure()
        if self.metrics.due():
            self.publish_metrics()
        if self.engine.busy and not self.engine.over_budget():
            self.rt.progress()  # the engine works within its budget: not a stall
        msg = self.rt.poll(0.02 if self._busy() else 0.25)
        if msg is not None:
            self._accept(msg)

    def _accept(self, msg: Message) -> None:
        tp = (msg.topic(), msg.partition())
        self.tracker.add(*tp, msg.offset())
        prior = self.attempts.prior(msg.partition(), msg.offset())
        if prior:
            m.PAGE_RETRIES.inc()
            log.warning("page task %s[%d]@%d ended %d worker process(es) before: running it alone",
                        msg.topic(), msg.partition(), msg.offset(), prior)
        self.fetch.accept(msg, self.epochs.get(tp, 0), prior)

    def _backpressure(self) -> None:
        inflight = self.tracker.inflight()
        if not self.rt.paused and inflight >= self.s.max_inflight_pages and self.rt.assigned:
            self.rt.pause()
        elif self.rt.paused and inflight <= self.s.max_inflight_pages // 2:
            self.rt.resume()
        m.INFLIGHT_PAGES.set(inflight)
        m.PAUSED_PARTITIONS.set(len(self.rt.assigned) if self.rt.paused else 0)

    def _maybe_start_batch(self) -> None:
        if self.engine.busy:
            return
        m.BATCH_LIMIT.set(self.engine.limit.value)
        batch = next_batch(self.fetch.ready(), self.engine.limit.value, self.s.batch_max_wait_ms)
        if not batch:
            return
        for it in batch:
            it.settle()
        failed = [it for it in batch if it.skips_engine()]  # finished (badly, or from a text layer) since take_failed()
        if failed:
            self.fetch.remove(failed)
            self._publish(failed, None)
            batch = [it for it in batch if not it.skips_engine()]
            if not batch:
                return
        try:
            self.attempts.mark([(*it.mark, it.task.document_id, it.task.page_number) for it in batch])
        except (RuntimeError, KafkaException, BufferError) as exc:
            log.error("%s: batch postponed", exc)  # the pages stay queued; tried again next step
            return
        self.fetch.remove(batch)
        self.engine.submit(batch)

    def _check_engine_budget(self) -> None:
        """Engine watchdog (see module docstring, step 1)."""
        if not self.engine.over_budget():
            return
        budget = self.engine.budget_s()
        batch = self.engine.abandon()
        self.engine_stuck = True
        self.stop.set()
        if len(batch) == 1:
            log.error("engine exceeded %.0fs on one page: failing it with engine_timeout and restarting", budget)
            timeout = OcrstreamError(ReasonCode.ENGINE_TIMEOUT,
                                     f"engine exceeded {self.s.page_timeout_s:.0f}s on this page")
            self._publish(batch, [timeout])
        else:
            log.error("engine exceeded %.0fs on a batch of %d pages: restarting; they run one by one next time",
                      budget, len(batch))

    def _finish_batch(self, wait_s: float = 0.0) -> None:
        done = self.engine.take(wait_s)
        if done is None:
            return
        batch, results, seconds = done
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(batch))
        self.stats.batch_latency_ms.append(seconds * 1000)
        m.BATCH_SIZE.labels(self.s.profile).observe(len(batch))
        m.BATCH_LATENCY.labels(self.s.profile).observe(seconds)
        for item in batch:
            item.image = None  # release pixels before publishing
        # The engine returned: these attempts did not end the process, whatever happens to the
        # results (a lost partition, a refused commit). The marks go now, not after the commit.
        self.attempts.clear([it.mark for it in batch])
        if self._publish(batch, results):
            log.debug("batch of %d pages in %.0f ms: page results published for %s", len(batch), seconds * 1000,
                      [it.mark for it in batch])

    def _publish(self, items: list[WorkItem], results: list | None) -> bool:
        """Publish the items' outputs and commit what is committable; True when both are durable."""
        if not items:
            return True
        outputs = outputs_for(self.s, items, results or [None] * len(items), self.engine.engine.info, self.stats)
        current = [it for it in items if self.epochs.get(it.tp) == it.epoch and it.tp in self.rt.assigned]
        for item in current:
            self.tracker.done(*item.tp, item.msg.offset())
        offsets = self.tracker.committable()
        if not self.rt.publish(outputs, offsets):
            return False
        self.tracker.mark_committed(offsets)
        return True

    def publish_metrics(self) -> WorkerMetrics:
        """Publish a :class:`WorkerMetrics` sample (figures since the last one) to the metrics topic."""
        return self.metrics.publish(self.stats, self.rt.lag)

    def _shutdown(self, deadline_s: float = 30.0) -> None:
        """Stop fetching, finish the in-flight batch (bounded), publish, commit; close leaves the group."""
        log.info("shutting down: finishing the in-flight batch")
        self.rt.pause()
        if self.engine.busy and not self.engine_stuck:
            self._finish_batch(wait_s=deadline_s)
            if self.engine.busy:
                log.warning("in-flight batch did not finish within %.0fs: abandoned (it will be replayed)", deadline_s)
        self.fetch.clear()


def run_worker(s: Settings, stop: StopFlag | None = None) -> int:
    """Run one OCR worker until SIGTERM/SIGINT (or ``stop``); returns the exit status.

    Exits the process with status 3 when the engine is stuck (see :class:`EngineStuck`):
    its thread cannot be interrupted, and a supervisor (``ocrstream run``, Kubernetes,
    compose ``restart``) starts a fresh process.
    """
    try:
        return run_stage(lambda: OcrWorker(s, stop=stop))
    except EngineStuck:
        logging.shutdown()
        os._exit(EXIT_ENGINE_STUCK)
