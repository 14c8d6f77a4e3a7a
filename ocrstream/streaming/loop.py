"""The stage runtime: one consume loop skeleton and one failure policy for every stage.

A stage owns a :class:`StageRuntime` and calls it from its own explicit loop (as in
confluent-kafka-python's ``examples/eos-transactions.py``)::

    rt = StageRuntime(s, "splitter", [s.topic("ingest")], stop=stop)
    rt.start()
    try:
        while not rt.stop.is_set():
            msg = rt.poll(0.5)                     # Kafka errors handled here
            if msg is None:
                continue
            outputs = rt.guard(msg, self.handle)   # any exception -> dead letter (+ failed result)
            rt.publish(outputs, [next offset])     # the one commit policy
    finally:
        rt.close()

The policy, decided here and nowhere else:

- **Handling a record**: an :class:`~ocrstream.errors.OcrstreamError` is the input's fault
  (its reason code); any other exception is a bug, reason ``internal_error`` with the
  error class. Both become a dead letter (topic/partition/offset/stage) and, where the
  document id is known, a ``failed`` document result; the offset moves on, so one record
  never stops its partition nor crash-loops the process.
- **Consumer errors**: ``_PARTITION_EOF`` is ignored; a fatal client error raises
  :class:`FatalKafkaError`; the rest are transient (librdkafka retries them itself), counted
  in ``ocrstream_kafka_errors_total`` and logged.
- **Publishing** (:meth:`publish`): at-least-once delivery failures are retried with
  exponential backoff and full jitter (outputs are keyed and the producer idempotent, so
  re-producing is safe), then the process exits; an offset commit refused because the
  partitions moved to another member is dropped (the new owner replays); an aborted
  transaction rewinds the stage to its committed offsets (:meth:`rewind`).
- **Fatal errors** (fenced transactional producer, fatal client error, a transaction commit
  that timed out twice, retries exhausted): :func:`run_stage` exits the process with
  :data:`EXIT_FATAL` so the supervisor (``ocrstream run``, Kubernetes) restarts it.

Liveness (``/healthz``, ``ocrstream_loop_stalled``): unhealthy when the loop thread has not
come back from a Kafka call for ``OCRSTREAM_LIVENESS_TIMEOUT_S``, or when work waits (records
behind the high watermark on an assigned partition, or the stage says it is busy) and the
loop has made no progress (consumed, published or committed; the OCR worker also counts an
engine batch still within its budget) for that long. Readiness (``/readyz``): partitions
assigned and the stage's own condition (state restored, engine loaded).

Back-pressure is generic too: :meth:`pause` / :meth:`resume` pause every assigned partition,
each for a named reason (``backpressure``; the OCR worker's ``lane`` hold of its batch lane
while interactive pages wait); the partitions are fetched when no reason holds them. This
runtime is the one owner of the pause state: a newly assigned partition gets it explicitly
(librdkafka keeps a partition's pause flag through revoke/lost and re-assignment, librdkafka
#1849: a partition paused when the session was lost came back paused and was never fetched
again). Pausing drops what librdkafka prefetched for the partitions; resuming fetches again from
the next offset not yet handed to the stage (librdkafka #2052).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from ocrstream import metrics as m
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import make_consumer
from ocrstream.settings import Settings

from .deadletters import failure_outputs
from .delivery import CommitFailed, Delivery, DeliveryError, FatalKafkaError, Output, TransactionAborted
from .health import serve_if_configured
from .signals import StopFlag

log = logging.getLogger(__name__)

EXIT_FATAL = 2  # process exit status after a FatalKafkaError: restart me
PUBLISH_ATTEMPTS = 6  # at-least-once publish attempts before the process gives up (about 30 s of backoff)
REWIND_ATTEMPTS = 8  # reads of the committed offsets while the group coordinator moves (about 40 s of backoff)
# The group coordinator moved or is loading (a broker failover): reading the committed offsets
# again finds the new one. Seen on the 3-broker test cluster: a rewind right after the
# coordinator's broker was killed got NOT_COORDINATOR, and exiting for it left the stage down.
_COORDINATOR_MOVING = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                       KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError._WAIT_COORD, KafkaError._TIMED_OUT,
                       KafkaError.REQUEST_TIMED_OUT, KafkaError._TRANSPORT, KafkaError.UNSTABLE_OFFSET_COMMIT}
# Commit refusals that mean "these partitions are no longer yours": the new owner replays them.
_MOVED = {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS,
          KafkaError.FENCED_INSTANCE_ID, KafkaError._ASSIGNMENT_LOST, KafkaError.STALE_MEMBER_EPOCH}


@dataclass
class RecordContext:
    """What a handler has learned about its record so far; the failure policy uses it for the
    ``failed`` document result (``document_id`` is otherwise read from the raw value)."""

    document_id: str | None = None
    source: Any = None  # schemas.ObjectRef
    submitted_at: int | None = None
    attempts: int = 1
    results_topic: str | None = None  # the record's own results topic (a tenant's), else the stage's
    webhook_url: str | None = None  # a checked completion callback: the failed result carries it too


Partitions = list[TopicPartition]


class StageRuntime:
    """Consumer, delivery, rebalance bookkeeping, failure policy and probes of one stage.

    Args:
        s: settings.
        stage: stage name: consumer group ``<prefix><stage>`` (unless ``group``), metric label,
            dead-letter ``stage``.
        topics: input topics to subscribe to.
        group: the full consumer group id, when it is not ``<prefix><stage>`` (the OCR workers of a
            model profile, :func:`topology.pages.worker_group`).
        stop: stop flag (default: SIGTERM/SIGINT handlers when in the main thread).
        on_assign: ``(partitions)`` called before they are assigned (restore state here; the
            records of these partitions are not fetched before it returns).
        on_revoke: ``(partitions)`` called before they are unassigned (finish and commit here).
        on_lost: ``(partitions)`` called when they were lost (drop state, commit nothing).
        on_rewind: ``(partitions)`` called before they are sought back to the committed offsets
            (drop or rebuild in-memory state of records that were not committed).
        ready: the stage's own readiness condition (with partitions assigned: ``/readyz``).
        busy: True while the stage holds work of its own (liveness: work waiting).
        results_topic: where failed document results go (None: the stage has no document).
        transactional: override the delivery mode (the drop-folder watcher is always transactional).
        tid: override the transactional id.
        consumer_extra: extra librdkafka consumer settings.
        group: override the consumer group id (full name; default ``<prefix><stage>``), e.g. the
            worker group of a model profile (``topology.worker_group``).

    Raises:
        FatalKafkaError: the transactional producer could not be initialised.
    """

    def __init__(self, s: Settings, stage: str, topics: list[str], *, stop: StopFlag | None = None,
                 on_assign: Callable[[Partitions], None] | None = None,
                 on_revoke: Callable[[Partitions], None] | None = None,
                 on_lost: Callable[[Partitions], None] | None = None,
                 on_rewind: Callable[[Partitions], None] | None = None,
                 ready: Callable[[], bool] | None = None, busy: Callable[[], bool] | None = None,
                 results_topic: str | None = "document-results", transactional: bool | None = None,
                 tid: str | None = None, consumer_extra: dict[str, Any] | None = None, group: str | None = None):
        self.s, self.stage, self.topics = s, stage, topics
        self.group = group or s.group(stage)
        self.stop = stop or StopFlag()
        self._on_assign, self._on_revoke, self._on_lost, self._on_rewind = on_assign, on_revoke, on_lost, on_rewind
        self._ready, self._busy = ready, busy
        self.dead_letter_topic = s.topic("dead-letters")
        self.results_topic = s.topic(results_topic) if results_topic else None
        self.lag: dict[str, int] = {}  # "topic/partition" -> records behind (librdkafka statistics)
        self._behind: dict[tuple[str, int], int] = {}  # records not yet handed to this stage
        self.consumer = make_consumer(s, self.group, **{
            "statistics.interval.ms": int(s.metrics_interval_s * 1000),
            "stats_cb": self._on_stats, **(consumer_extra or {})})
        self.delivery = Delivery(s, self.consumer, stage, transactional=transactional, tid=tid)
        self.assigned: set[tuple[str, int]] = set()  # kept by the callbacks: probes never call into the client
        self._pauses: set[str] = set()  # reasons the partitions are paused for (see pause())
        self._last_beat = self._last_progress = time.monotonic()
        self._next_backlog = 0.0
        self._behind_at = 0.0  # time.monotonic() of the last backlog measurement
        self._started = False  # before start(): loading models etc., alive by definition
        self._in_callback = False  # restores inside callbacks have their own idle timeout
        # Probes answer from construction on: /healthz while models load, /readyz 503 until assigned.
        self.http = serve_if_configured(s.http_port, self.ready, self.alive)

    # --- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe (the probes already answer on ``OCRSTREAM_HTTP_PORT``)."""
        self.consumer.subscribe(self.topics, on_assign=self._assign, on_revoke=self._revoke, on_lost=self._lost)
        self._started = True
        self.progress()
        log.info("%s consuming %s (group %s, delivery %s)", self.stage, self.topics, self.group,
                 "exactly-once" if self.delivery.transactional else "at-least-once")

    def close(self) -> None:
        """Deliver what is queued, leave the group (revoke callbacks run), stop the probes."""
        try:
            self.delivery.close()
            self.consumer.close()
        finally:
            if self.http:
                self.http.close()

    # --- rebalance callbacks (inside poll()/consume(), on the loop thread) -----------------
    def _run_hook(self, hook: Callable[[Partitions], None] | None, partitions: Partitions) -> None:
        """Run a stage's rebalance hook; liveness holds while it runs (restores inside it are
        bounded by their own idle timeout)."""
        self.beat()
        if hook is None:
            return
        self._in_callback = True
        try:
            hook(partitions)
        finally:
            self._in_callback = False
            self.beat()

    def _assign(self, consumer, partitions: Partitions) -> None:
        self._run_hook(self._on_assign, partitions)
        consumer.incremental_assign(partitions)
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        # Set the pause flag explicitly: librdkafka keeps it through revoke/lost and re-assignment.
        (consumer.pause if self.paused else consumer.resume)(partitions)
        log.info("%s: assigned %s", self.stage, sorted(p.partition for p in partitions))

    def _revoke(self, consumer, partitions: Partitions) -> None:
        self._run_hook(self._on_revoke, partitions)
        self._forget(partitions)
        consumer.incremental_unassign(partitions)
        log.info("%s: revoked %s", self.stage, sorted(p.partition for p in partitions))

    def _lost(self, consumer, partitions: Partitions) -> None:
        self._run_hook(self._on_lost, partitions)
        self._forget(partitions)
        consumer.incremental_unassign(partitions)
        log.warning("%s: lost %s", self.stage, sorted(p.partition for p in partitions))

    def _forget(self, partitions: Partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        self.assigned -= gone
        for topic, partition in gone:  # another member reports their lag now
            self._behind.pop((topic, partition), None)
            try:
                m.CONSUMER_LAG.remove(topic, str(partition))
            except KeyError:
                pass

    # --- consuming ------------------------------------------------------------------
    def poll(self, timeout_s: float) -> Message | None:
        """One record, or None (nothing, or a consumer error handled by the policy).

        Raises:
            FatalKafkaError: a fatal consumer error.
        """
        self.beat()
        msg = self.consumer.poll(timeout_s)
        self.beat()
        self._measure_backlog()
        if msg is None or not self._usable(msg):
            return None
        m.MESSAGES_CONSUMED.labels(self.stage).inc()
        self.progress()
        return msg

    def consume(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` records (errors removed by the policy).

        Raises:
            FatalKafkaError: a fatal consumer error.
        """
        self.beat()
        msgs = [msg for msg in self.consumer.consume(max_records, timeout_s) if self._usable(msg)]
        self.beat()
        self._measure_backlog()
        if msgs:
            m.MESSAGES_CONSUMED.labels(self.stage).inc(len(msgs))
            self.progress()
        return msgs

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() == KafkaError._PARTITION_EOF:
            return False
        m.KAFKA_ERRORS.labels(self.stage, "fatal" if err.fatal() else "transient").inc()
        if err.fatal():
            raise FatalKafkaError(f"{self.stage}: fatal consumer error: {err}")
        log.warning("%s: consumer error (librdkafka retries): %s", self.stage, err)
        return False

    # --- the failure policy --------------------------------------------------------------
    def guard(self, msg: Message, handler: Callable[[Message, RecordContext], list[Output]], *,
              reraise_transient: bool = False) -> list[Output]:
        """``handler(msg, ctx)``'s outputs, or the failure outputs when it raises (see module docstring).

        Args:
            reraise_transient: let a transient :class:`OcrstreamError` (an outage, not the record's
                fault) propagate, for a stage that rewinds and reads the record again instead.
        """
        ctx = RecordContext()
        try:
            return handler(msg, ctx)
        except OcrstreamError as exc:
            if reraise_transient and exc.transient:
                raise
            log.warning("%s: %s[%d]@%d refused: %s", self.stage, msg.topic(), msg.partition(), msg.offset(), exc)
            return self.failure(msg, exc, ctx)
        except Exception as exc:  # noqa: BLE001 - the policy: a bug in one record must not stop the partition
            m.STAGE_ERRORS.labels(self.stage).inc()
            log.exception("%s: unexpected error on %s[%d]@%d", self.stage, msg.topic(), msg.partition(), msg.offset())
            return self.failure(msg, exc, ctx)

    def failure(self, msg: Message, exc: BaseException, ctx: RecordContext | None = None) -> list[Output]:
        """Dead letter (+ ``failed`` document result) for ``msg`` (reason ``internal_error``
        for exceptions that carry no reason code)."""
        ctx = ctx or RecordContext()
        return failure_outputs(self.dead_letter_topic, ctx.results_topic or self.results_topic, msg, exc, self.stage,
                               document_id=ctx.document_id, source=ctx.source, submitted_at=ctx.submitted_at,
                               attempts=getattr(exc, "attempts", ctx.attempts), default=ReasonCode.INTERNAL_ERROR,
                               webhook_url=ctx.webhook_url)

    # --- publishing (the commit policy's failure handling) ------------------------------
    def publish(self, outputs: list[Output], offsets: Partitions) -> bool:
        """Publish ``outputs`` and commit ``offsets`` (see :mod:`.delivery`).

        Returns:
            True when outputs and offsets are durable. False when the offsets were not
            committed: the partitions moved to another member (it replays them), or the
            transaction was aborted and the stage was rewound (:meth:`rewind`).

        Raises:
            FatalKafkaError: fenced, fatal, or still failing after ``PUBLISH_ATTEMPTS``.
        """
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):  # explicit: each failure kind ends differently
            try:
                self.delivery.publish(outputs, offsets)
            except TransactionAborted as exc:
                log.warning("%s: %s: rewinding to the committed offsets", self.stage, exc)
                self.rewind()
                return False
            except DeliveryError as exc:
                m.KAFKA_ERRORS.labels(self.stage, "delivery").inc()
                if attempt == PUBLISH_ATTEMPTS:
                    raise FatalKafkaError(f"{self.stage}: outputs not acknowledged after {attempt} attempts: {exc}")
                self._backoff(attempt, exc)
                continue
            except CommitFailed as exc:  # at-least-once: the outputs are durable, only the commit failed
                err: KafkaError = exc.error
                if err.fatal():
                    raise FatalKafkaError(f"{self.stage}: commit failed fatally: {err}") from exc
                if err.code() in _MOVED:
                    # Under cooperative rebalancing the partitions may even stay ours: then the next
                    # commit covers these offsets; otherwise the new owner replays (at-least-once).
                    log.warning("%s: commit refused (%s): rebalance in progress or partitions moved", self.stage, err)
                    return False
                if attempt == PUBLISH_ATTEMPTS:
                    raise FatalKafkaError(f"{self.stage}: commit failed after {attempt} attempts: {err}") from exc
                self._backoff(attempt, exc)
                outputs = []  # already acknowledged: only the commit is retried
                continue
            for out in outputs:
                m.MESSAGES_PRODUCED.labels(self.stage, out.topic).inc()
            self.progress()
            return True
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, exc: BaseException, what: str = "publish") -> None:
        # Full jitter, as ocrstream/retry.py (AWS Architecture Blog, "Exponential Backoff And Jitter",
        # 2015); an explicit loop here because each failure kind of publish() ends differently.
        delay = random.uniform(0, min(10.0, 0.5 * 2 ** attempt))
        log.warning("%s: %s attempt %d failed (%s): retrying in %.1fs", self.stage, what, attempt, exc, delay)
        self.beat()
        time.sleep(delay)

    def rewind(self, partitions: Partitions | None = None) -> None:
        """Seek ``partitions`` (default: all assigned) back to their committed offsets, after the
        stage's ``on_rewind`` dropped what it held of the uncommitted records.

        Raises:
            FatalKafkaError: the committed offsets cannot be read or the seek fails: reading on
                past an aborted batch would skip its records, so restart instead.
        """
        tps = partitions if partitions is not None else [TopicPartition(t, p) for t, p in sorted(self.assigned)]
        if not tps:
            return
        try:
            committed = self._committed(tps)
            if self._on_rewind:
                self._on_rewind(tps)
            for tp in committed:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition,
                                                  tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
        except KafkaException as exc:
            raise FatalKafkaError(f"{self.stage}: could not rewind to the committed offsets: {exc}") from exc
        log.info("%s: rewound %s to the committed offsets", self.stage, sorted(tp.partition for tp in tps))

    def _committed(self, tps: Partitions) -> Partitions:
        """The committed offsets of ``tps``, read again (with backoff, ``REWIND_ATTEMPTS`` times)
        while the group coordinator moves or loads.

        Raises:
            KafkaException: any other error, or still failing after the last attempt.
        """
        for attempt in range(1, REWIND_ATTEMPTS + 1):
            try:
                return self.consumer.committed(tps, timeout=30)
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_MOVING or attempt == REWIND_ATTEMPTS:
                    raise
                self._backoff(attempt, exc, "reading the committed offsets")
        raise AssertionError("unreachable")

    # --- back-pressure --------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        """True while some reason pauses the partitions."""
        return bool(self._pauses)

    def paused_for(self, reason: str) -> bool:
        """True while ``reason`` pauses the partitions."""
        return reason in self._pauses

    def pause(self, reason: str = "backpressure") -> None:
        """Stop fetching every assigned partition (and those assigned later) for ``reason``,
        until :meth:`resume` with the same reason."""
        if not self._pauses and self.assigned:
            self.consumer.pause([TopicPartition(t, p) for t, p in self.assigned])
        if reason not in self._pauses:
            log.debug("%s: %s paused (%s)", self.stage, self.topics, reason)
        self._pauses.add(reason)

    def resume(self, reason: str = "backpressure") -> None:
        """Lift ``reason``'s pause; fetch again once no other reason holds the partitions."""
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        log.debug("%s: %s resumed (%s)%s", self.stage, self.topics, reason,
                  f", still paused for {sorted(self._pauses)}" if self._pauses else "")
        if not self._pauses and self.assigned:
            self.consumer.resume([TopicPartition(t, p) for t, p in self.assigned])

    # --- probes -----------------------------------------------------------------------------
    def beat(self) -> None:
        """The loop thread is alive (called around every Kafka call)."""
        self._last_beat = time.monotonic()

    def progress(self) -> None:
        """The stage advanced: consumed, published or committed (or its engine works within budget)."""
        self._last_progress = self._last_beat = time.monotonic()
        m.LOOP_PROGRESS.labels(self.stage).set(time.time())

    def work_waiting(self) -> bool:
        """Records wait on an assigned partition (measured after the last progress: an older
        measurement proves nothing about now), or the stage holds work of its own."""
        backlog = self._behind_at > self._last_progress and any(n > 0 for n in self._behind.values())
        return backlog or bool(self._busy and self._busy())

    def alive(self) -> bool:
        """Liveness (``/healthz``), see the module docstring; also sets ``ocrstream_loop_stalled``."""
        now, limit = time.monotonic(), self.s.liveness_timeout_s
        if not self._started or self._in_callback:
            return True  # loading (models, checkpoint) or restoring: bounded by their own timeouts
        stalled = now - self._last_beat > limit or (self.work_waiting() and now - self._last_progress > limit)
        m.LOOP_STALLED.labels(self.stage).set(1 if stalled else 0)
        if stalled:
            log.error("%s: the loop has not advanced for %.0fs with work waiting", self.stage,
                      now - min(self._last_beat, self._last_progress))
        return not stalled

    def ready(self) -> bool:
        """Readiness (``/readyz``): partitions assigned and the stage's own condition."""
        return bool(self.assigned) and (self._ready is None or self._ready())

    def _on_stats(self, stats_json: str) -> None:
        self.lag = m.parse_lag(stats_json)  # the gauges and the worker's metrics-topic sample

    def _measure_backlog(self) -> None:
        # On the loop thread, every liveness_timeout_s / 4: records behind = high watermark (the
        # last stable offset under read_committed) - the fetch position (before the first fetch
        # after an assign or seek: the committed offset, else the low watermark, where
        # auto.offset.reset=earliest starts). Not librdkafka's
        # consumer_lag: offsets committed inside a transaction do not update it (an idle
        # exactly-once stage would look behind forever), and a paused partition that never
        # fetched reports no offsets at all (exactly the stall to catch).
        now = time.monotonic()
        if now < self._next_backlog or not self.assigned:
            return
        self._next_backlog = now + max(0.5, self.s.liveness_timeout_s / 4)
        behind: dict[tuple[str, int], int] = {}
        try:
            tps = [TopicPartition(t, p) for t, p in sorted(self.assigned)]
            positions = self.consumer.position(tps)
            unknown = [tp for tp in positions if tp.offset < 0]
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in (self.consumer.committed(unknown, timeout=5) if unknown else [])}
            for tp in positions:
                low, high = self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                pos = tp.offset if tp.offset >= 0 else committed.get((tp.topic, tp.partition), -1)
                pos = pos if pos >= 0 else low
                behind[(tp.topic, tp.partition)] = max(0, high - pos)
        except KafkaException as exc:  # a broker away: keep the last figures
            log.debug("%s: backlog not measured: %s", self.stage, exc)
            return
        self._behind, self._behind_at = behind, time.monotonic()


def run_stage(build: Callable[[], Any]) -> int:
    """Build a stage and run it until stopped.

    Returns:
        0 after a graceful stop; :data:`EXIT_FATAL` after a :class:`FatalKafkaError`, so the
        supervisor restarts the process (the restart fences this instance's transactional id).
    """
    try:
        build().run()
    except FatalKafkaError as exc:
        log.critical("fatal Kafka error, exiting for a restart: %s", exc)
        return EXIT_FATAL
    return 0
