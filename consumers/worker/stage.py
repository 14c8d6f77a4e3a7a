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
4. a new batch starts when one is due (:mod:`.batching`: the interactive lane first), after its
   in-flight marks are durable;
5. flow control (:meth:`OcrWorker._flow`, the one place that decides what is fetched; the
   pause state itself is each runtime's): back-pressure, and the lane hold below;
6. poll: one record is accepted and its download + render starts (:mod:`.fetch`), the
   interactive lane's consumer first.

Priority lanes (:mod:`topology.pages`): the worker reads its profile's ``pages`` topic (the
batch lane) in group ``worker`` and ``pages-interactive`` with a second consumer in group
``worker-interactive`` (:func:`topology.pages.worker_group`; one group per topic, so that each
lane's partitions are spread over all workers). While interactive pages are in the worker
(consumed and not committed) the batch lane's partitions are paused (the *lane hold*), so no
more batch pages are fetched, and resumed once the interactive lane is empty. Back-pressure
pauses the batch lane at ``max_inflight_pages`` less a reserve (:func:`reserve_pages`), resumed
when half drained, and the interactive lane only at ``max_inflight_pages``, resumed as soon as a
page is done: prefetched batch pages never keep an interactive page from being fetched. They
stay queued and go to the engine after the interactive ones (:mod:`.batching`; their renders
too, :mod:`.fetch`). A batch already in the engine is not interrupted: an interactive page
waits for it, which is why the latency bound under a batch backlog comes from small batches
(README, "Priority lanes"). Each lane's records are published and committed through its own
consumer (and, exactly-once, its own transactional producer, ``<transactional id>.interactive``);
a batch never mixes lanes.

Rebalances (cooperative-sticky): on revoke the in-flight batch is finished, published and
committed and queued pages of revoked partitions are dropped (their new owner re-reads
them); on lost, state is dropped without a commit, and a batch still in the engine may
publish its page results but never moves the commit position of a partition that was lost
(assignment epochs), even if the same partition was assigned again meanwhile.
"""

from __future__ import annotations

import logging
import os
import time

from confluent_kafka import KafkaException, Message, TopicPartition

from ocrstream import metrics as m
from ocrstream import result_cache as rc
from ocrstream.engine import Engine
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import make_producer
from ocrstream.profiles import profile_settings
from ocrstream.settings import Settings
from ocrstream.streaming import FatalKafkaError, OffsetTracker, StageRuntime, StopFlag, run_stage
from ocrstream.streaming.delivery import transactional_id
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
IDLE_POLL_S = 0.1  # batch-lane poll when idle: an interactive record waits at most this for its own poll


def reserve_pages(s: Settings) -> int:
    """Of ``max_inflight_pages``, the pages the batch lane leaves to the interactive lane:
    ``batch_max_pages`` or a quarter of the limit, whichever is more, at most half of it (8 of
    32 by default: an interactive document of up to 8 pages is fetched at once, however many
    batch pages wait in the worker)."""
    limit = s.max_inflight_pages
    return min(limit // 2, max(s.batch_max_pages, limit // 4))


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
        hooks = dict(on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost,
                     on_rewind=self._on_rewind, results_topic=None)
        # The batch lane: the stage's own runtime (probes, readiness, liveness).
        self.rt = StageRuntime(s, STAGE, [s.page_topic(s.profile, "batch")], stop=stop,
                               ready=lambda: self.engine.engine is not None, busy=self._busy,
                               group=s.group(worker_group(s.profile)), **hooks)
        self.stop = self.rt.stop
        # The interactive lane: a second consumer in its own group, without probes of its own.
        self.lane_rt = StageRuntime(s.model_copy(update={"http_port": 0}), STAGE,
                                    [s.page_topic(s.profile, "interactive")], stop=self.stop,
                                    group=s.group(worker_group(s.profile, "interactive")),
                                    tid=f"{transactional_id(s, STAGE)}.interactive", **hooks)
        self.runtimes = {"interactive": self.lane_rt, "batch": self.rt}  # drain order (topology.pages.LANES)
        self.lanes = {rt.topics[0]: lane for lane, rt in self.runtimes.items()}  # page topic -> lane
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
        tps = [(p.topic, p.partition) for p in partitions]
        try:
            self.attempts.restore(tps)
        except (OcrstreamError, KafkaException) as exc:
            # Running without the counts could let a poison page kill workers forever: restart.
            raise FatalKafkaError(f"in-flight marks of {tps} unreadable: {exc}") from exc

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
        self.attempts.forget([(p.topic, p.partition) for p in partitions])  # the next owner restores them

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
        self.lane_rt.start()
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
            try:
                self.lane_rt.close()
            finally:
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
        self._flow()
        if self.metrics.due():
            self.publish_metrics()
        if self.engine.busy and not self.engine.over_budget():
            self.rt.progress()  # the engine works within its budget: not a stall
        msg = self.lane_rt.poll(0)  # the interactive lane first
        if msg is not None:
            self.rt.progress()  # liveness is the batch runtime's: held while interactive pages run
        else:
            msg = self.rt.poll(0.02 if self._busy() else IDLE_POLL_S)
        if msg is not None:
            self._accept(msg)

    def _accept(self, msg: Message) -> None:
        tp = (msg.topic(), msg.partition())
        self.tracker.add(*tp, msg.offset())
        prior = self.attempts.prior(*tp, msg.offset())
        if prior:
            m.PAGE_RETRIES.inc()
            log.warning("page task %s[%d]@%d ended %d worker process(es) before: running it alone",
                        msg.topic(), msg.partition(), msg.offset(), prior)
        self.fetch.accept(msg, self.epochs.get(tp, 0), prior, self.lanes.get(msg.topic(), "batch"))

    def _flow(self) -> None:
        """What is fetched (see module docstring, priority lanes)."""
        inflight = self.tracker.inflight()
        limit = self.s.max_inflight_pages
        batch_limit = max(1, limit - reserve_pages(self.s))
        self._backpressure(self.rt, inflight, batch_limit, batch_limit // 2)
        # No hysteresis on the interactive lane: waiting for half the batch pages to drain would
        # keep its next page unfetched for minutes.
        self._backpressure(self.lane_rt, inflight, limit, limit - 1)
        if self.tracker.inflight(set(self.lane_rt.topics)):
            if not self.rt.paused_for("lane"):
                log.debug("interactive pages in flight: batch lane held")
                self.rt.pause("lane")
        elif self.rt.paused_for("lane"):
            log.debug("interactive lane empty: batch lane fetched again")
            self.rt.resume("lane")
        m.INFLIGHT_PAGES.set(inflight)
        m.PAUSED_PARTITIONS.set(sum(len(rt.assigned) for rt in self.runtimes.values() if rt.paused_for("backpressure")))
        m.LANE_HELD_PARTITIONS.set(len(self.rt.assigned) if self.rt.paused_for("lane") else 0)

    @staticmethod
    def _backpressure(rt: StageRuntime, inflight: int, limit: int, resume_at: int) -> None:
        """Pause ``rt``'s partitions at ``limit`` pages in flight, resume them at ``resume_at``."""
        if not rt.paused_for("backpressure") and inflight >= limit and rt.assigned:
            rt.pause("backpressure")
        elif rt.paused_for("backpressure") and inflight <= resume_at:
            rt.resume("backpressure")

    def _maybe_start_batch(self) -> None:
        if self.engine.busy:
            return
        m.BATCH_LIMIT.set(self.engine.limit.value)
        preparing = [it for it in self.fetch.queue if not it.ready()]
        batch = next_batch(self.fetch.ready(), self.engine.limit.value, self.s.batch_max_wait_ms, preparing)
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
        now = time.monotonic()
        for it in batch:
            m.LANE_QUEUE_WAIT.labels(it.lane).observe(now - it.received)
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
        """Publish the items' outputs and commit what is committable, each lane through its own
        runtime; True when all are durable."""
        if not items:
            return True
        outputs = outputs_for(self.s, items, results or [None] * len(items), self.engine.engine.info, self.stats)
        durable = True
        for rt in self.runtimes.values():
            mine = [i for i, it in enumerate(items) if it.tp[0] in rt.topics]
            if not mine:
                continue
            for item in (items[i] for i in mine):
                if self.epochs.get(item.tp) == item.epoch and item.tp in rt.assigned:
                    self.tracker.done(*item.tp, item.msg.offset())
            offsets = [tp for tp in self.tracker.committable() if tp.topic in rt.topics]
            if not rt.publish([outputs[i] for i in mine], offsets):
                durable = False
                continue
            self.tracker.mark_committed(offsets)
            if rt is not self.rt:
                self.rt.progress()
        return durable

    def publish_metrics(self) -> WorkerMetrics:
        """Publish a :class:`WorkerMetrics` sample (figures since the last one) to the metrics topic."""
        return self.metrics.publish(self.stats, {**self.rt.lag, **self.lane_rt.lag})

    def _shutdown(self, deadline_s: float = 30.0) -> None:
        """Stop fetching, finish the in-flight batch (bounded), publish, commit; close leaves the group."""
        log.info("shutting down: finishing the in-flight batch")
        for rt in self.runtimes.values():
            rt.pause()
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
