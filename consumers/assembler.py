"""Assembler: page results (``page-results``) -> one document result per document (``document-results``).

Why not faust
-------------
The stage was specified on faust-streaming (0.15.3, aiokafka 0.14). At the
protocol level faust works against Apache Kafka 4.1: it joins the group,
creates its changelog topics through the admin API and restores tables after a
restart. But its recovery is racy: ``tables/recovery.py`` resumes the stream
partitions (and the fetcher is already running) *before* it seeks them to their
committed offsets. In a small experiment (a counter table, records produced
while the worker was down, then a restart; 18 restarts) this gave:

- 4 restarts where records were processed twice (the seek rewinds records that
  were already handed to the agent; faust-streaming issue #216), and
- 2 restarts where a record was silently never processed: the first record of
  a partition that had no committed offset yet (no error logged). This is
  consistent with the same race: aiokafka's ``seek_to_committed`` skips
  partitions without a committed offset, so a record fetched and dropped during
  the race is never re-read, and later commits move past it.

Duplicates would be harmless here (see "Idempotence"), but a lost page result
means a document that never completes. So the stage is a plain confluent-kafka
consume-transform-produce loop with the same design faust would have had: state
partitioned like the input and backed by a compacted changelog topic.

State and changelog
-------------------
State lives in memory, per input partition, and every change is written to the
compacted topic ``<prefix>assembler-state`` (created by the stage when missing,
with exactly as many partitions as ``page-results``). A change caused by a
record of ``page-results`` partition *p* goes to state partition *p*, so a
newly assigned partition is restored by reading state partition *p* from the
beginning (read_committed) before its records are processed. Keys:

- ``page/<document_id>/<page_number>``: the page result, as received. One record
  per page, so no single record grows with the size of a document.
- ``done/<document_id>``: a small marker ``{"status", "completed_at"}`` written
  once the document result is acknowledged; the page records are then
  tombstoned.

The topic is ``cleanup.policy=compact,delete`` with the retention of
``page-results`` (7 days): a marker only has to outlive the page results that
could be replayed, and a document still incomplete after 7 days is dropped.

Idempotence
-----------
- A page result for a document with a done marker is ignored, so replays or
  re-sent page results never produce a second document result.
- Duplicate page results before completion overwrite the same page (a page is
  counted once); a ``succeeded`` page is not replaced by a later ``failed`` one.
- At-least-once (default): outputs (document results, dead letters, page
  records) are flushed first; only then are the done markers and tombstones
  produced, and then the input offsets committed. A crash before the marker is
  acknowledged replays the inputs and publishes the document result again (the
  ``document-results`` topic is compacted by document id); a crash after it
  never does. The marker is never written before the result is acknowledged, so
  a result cannot be lost.
- Exactly-once (``OCRSTREAM_DELIVERY=exactly-once``): outputs, markers,
  tombstones and input offsets go in one Kafka transaction.

Any failed delivery or commit rewinds: state is rebuilt from the changelog and
the partitions are sought to their committed offsets.

A partition is restored inside the rebalance callback, before its first record
is processed (about 1 s plus the time to read its changelog). Memory: the page
results of documents in progress, plus one done marker (document id + time)
per document finished within the retention.

Bad input
---------
A value that fails ``decode`` (``invalid_json``, ``schema_violation``,
``unsupported_schema_version``), a key that is not the ``document_id``
(``invalid_key``: pages of one document must share a partition), a
``page_number`` above ``page_count`` or a ``page_count`` that disagrees with
earlier pages (``schema_violation``) becomes a :class:`~schemas.DeadLetter`
(stage ``assembler``) and processing continues.

Security
--------
All clients are librdkafka clients built by :mod:`ocrstream.kafka`, so every
Kafka setting passes through: ``security.protocol`` (PLAINTEXT, SSL,
SASL_PLAINTEXT, SASL_SSL), SASL PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512 with
username and password, the CA bundle and client certificate/key (+ password).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import NewTopic

from ocrstream import metrics as m
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import consumer_config, make_admin, make_consumer, topic_partitions
from ocrstream.settings import Settings
from schemas import DocumentResult, Error, Page, PageResult, decode, encode
from topology import topic_specs

from .common import StopFlag, dead_letter, dead_letter_headers, guess_document_id, now_ms
from .delivery import Delivery, DeliveryError, Output

log = logging.getLogger(__name__)

STAGE = "assembler"
STATE_TOPIC = "assembler-state"  # logical name; full name is s.topic(STATE_TOPIC)
BATCH_MAX = 500  # records per consume() call, published and committed together
CONSUME_WAIT_S = 0.1  # consume() waits this long for a full batch: bounds the latency it adds
RESTORE_IDLE_TIMEOUT_S = 60.0  # restore gives up when the changelog sends nothing for this long
PRUNE_INTERVAL_S = 600.0  # how often expired done markers are dropped from memory

_SPECS = {t.name: t for t in topic_specs()}
# Done markers must outlive the page results that could be replayed (same retention).
STATE_RETENTION_MS = int(_SPECS["page-results"].config["retention.ms"])
# A page record is a page result as received, plus a key.
STATE_MAX_MESSAGE_BYTES = int(_SPECS["page-results"].config["max.message.bytes"]) + 1024 * 1024
MAX_RESULT_BYTES = int(_SPECS["document-results"].config["max.message.bytes"])


# --- pure assembly -----------------------------------------------------------------------

def assemble(pages: Iterable[PageResult], completed_at: int) -> DocumentResult:
    """The document result for a complete set of page results.

    Args:
        pages: one result per page (any order), all of the same document.
        completed_at: ms since the epoch.

    Returns:
        ``succeeded`` if every page succeeded, else ``failed`` with the first
        failed page's error (message prefixed ``"page N: "``). ``pages`` sorted by
        page number; ``timings_ms`` the per-stage times summed over pages (ms)
        plus ``end_to_end_ms`` = ``completed_at`` - the earliest ``submitted_at``.
        Source and engine are those of the lowest-numbered page.

    Raises:
        ValueError: ``pages`` is empty.
    """
    ordered = sorted(pages, key=lambda p: p.page_number)
    if not ordered:
        raise ValueError("no pages")
    first = ordered[0]
    failed = next((p for p in ordered if p.status == "failed"), None)
    error = None
    if failed is not None:
        cause = failed.error or Error(code=ReasonCode.ENGINE_ERROR.value, message="failed without an error")
        error = Error(code=cause.code, message=f"page {failed.page_number}: {cause.message}")
    timings: dict[str, float] = defaultdict(float)
    for p in ordered:
        for stage, ms in p.timings_ms.items():
            timings[stage] += ms
    submitted_at = min(p.submitted_at for p in ordered)
    timings["end_to_end_ms"] = float(completed_at - submitted_at)
    # model_construct: the fields were validated when the page result was decoded.
    page_fields = list(Page.model_fields)
    return DocumentResult(
        document_id=first.document_id, source=first.source,
        status="failed" if failed is not None else "succeeded", error=error,
        page_count=first.page_count,
        pages=[Page.model_construct(**{f: getattr(p, f) for f in page_fields}) for p in ordered],
        engine=first.engine, timings_ms=dict(timings), submitted_at=submitted_at, completed_at=completed_at,
    )


def without_detections(result: DocumentResult) -> DocumentResult:
    """A ``failed`` (``result_too_large``) copy of a result too large for its topic: pages keep
    their status, size and timings, detections are dropped."""
    size_error = Error(code=ReasonCode.RESULT_TOO_LARGE.value,
                       message=f"document result exceeds {MAX_RESULT_BYTES} bytes; detections dropped")
    return result.model_copy(update={
        "status": "failed", "error": size_error,
        "pages": [p.model_copy(update={"detections": []}) for p in result.pages],
    })


def page_key(document_id: str, page_number: int) -> str:
    """State-topic key of one page record."""
    return f"page/{document_id}/{page_number}"


def done_key(document_id: str) -> str:
    """State-topic key of a document's done marker."""
    return f"done/{document_id}"


# --- state topic ---------------------------------------------------------------------------

def ensure_state_topic(s: Settings, timeout_s: float = 30.0) -> int:
    """Create the state topic when missing; returns its partition count.

    It gets the partition count and replication factor of ``page-results``
    (state partition *p* holds the state of input partition *p*).

    Raises:
        RuntimeError: ``page-results`` does not exist after ``timeout_s`` seconds, or the state topic exists
            with a different partition count (e.g. ``page-results`` was
            repartitioned: the state topic must then be recreated).
    """
    admin = make_admin(s)
    source, state = s.topic("page-results"), s.topic(STATE_TOPIC)
    # A topic created a moment ago (stages started together with `topics apply`) can take a
    # while to reach this broker's metadata: wait for it rather than crash the stage.
    try:
        topic_partitions(admin, source, timeout_s)
    except KafkaException:
        raise RuntimeError(f"topic {source} does not exist (run `ocrstream topics apply`)") from None
    md = admin.list_topics(timeout=timeout_s)
    partitions = md.topics[source].partitions
    want = len(partitions)
    if state not in md.topics or md.topics[state].error is not None:
        rf = len(partitions[0].replicas)
        config = {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(STATE_RETENTION_MS),
            "min.insync.replicas": str(min(2, rf)),
            "max.message.bytes": str(STATE_MAX_MESSAGE_BYTES),
            "segment.ms": str(24 * 3600 * 1000),  # roll daily, so compaction can run
        }
        future = admin.create_topics([NewTopic(state, want, rf, config=config)],
                                     operation_timeout=timeout_s)[state]
        try:
            future.result(timeout_s)
            log.info("created state topic %s (%d partitions, rf %d)", state, want, rf)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    # Waits until a just-created state topic is visible in metadata, so the first restore finds it.
    have = len(topic_partitions(admin, state, timeout_s))
    if have != want:
        raise RuntimeError(f"state topic {state} has {have} partitions but {source} has {want}: "
                           "recreate the state topic (in-flight documents are lost)")
    return want


# --- the stage ----------------------------------------------------------------------------

@dataclass
class _PartitionState:
    """What one input partition's documents have so far."""

    pages: dict[str, dict[int, PageResult]] = field(default_factory=dict)  # doc -> page number -> result
    done: dict[str, int] = field(default_factory=dict)  # doc -> completed_at (ms)


@dataclass
class _Batch:
    outputs: list[Output] = field(default_factory=list)  # results, dead letters, page records
    finals: list[Output] = field(default_factory=list)  # done markers + tombstones (after outputs are acked)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to read

    def __bool__(self) -> bool:
        return bool(self.outputs or self.finals or self.offsets)


class Assembler:
    """The assembler loop (see module docstring).

    Args:
        s: settings (``delivery`` selects at-least-once or transactions).
        stop: stop flag (default: installs SIGTERM/SIGINT handlers when in the main thread).

    Raises:
        RuntimeError: from the constructor, when the state topic cannot be used
            (see :func:`ensure_state_topic`).
    """

    def __init__(self, s: Settings, stop: StopFlag | None = None):
        self.s = s
        self.stop = stop or StopFlag()
        self.source_topic = s.topic("page-results")
        self.state_topic = s.topic(STATE_TOPIC)
        self.partitions = ensure_state_topic(s)
        self.consumer = make_consumer(s, s.group(STAGE))
        self.delivery = Delivery(s, self.consumer, STAGE)
        self.states: dict[int, _PartitionState] = {}
        self.ready: list[tuple[int, str]] = []  # (partition, doc) complete after a restore, not yet published
        self.cleanup: list[Output] = []  # tombstones for leftovers found during a restore
        self.needs_rewind = False
        self.next_prune = time.monotonic() + PRUNE_INTERVAL_S
        self.completed = 0  # documents published by this instance

    # --- restore ------------------------------------------------------------------
    def restore(self, partitions: list[int]) -> None:
        """Rebuild the state of ``partitions`` from the state topic (replacing what is in memory).

        Raises:
            OcrstreamError: ``storage_error`` (transient) when the changelog stops
                answering for ``RESTORE_IDLE_TIMEOUT_S`` seconds.
        """
        if not partitions:
            return
        started = time.monotonic()
        fresh = {p: _PartitionState() for p in partitions}
        conf = consumer_config(self.s, f"{self.s.group(STAGE)}-restore",
                               **{"enable.partition.eof": True, "fetch.wait.max.ms": 50})
        conf.pop("group.instance.id", None)  # assign() only: never joins a group
        consumer = Consumer(conf)
        records = 0
        try:
            consumer.assign([TopicPartition(self.state_topic, p, OFFSET_BEGINNING) for p in partitions])
            pending = set(partitions)
            deadline = time.monotonic() + RESTORE_IDLE_TIMEOUT_S
            while pending:
                msgs = consumer.consume(1000, 0.1)
                if not msgs and time.monotonic() > deadline:
                    raise OcrstreamError(ReasonCode.STORAGE_ERROR, f"restore of {self.state_topic} "
                                         f"partitions {sorted(pending)} stalled", transient=True)
                for m in msgs:
                    deadline = time.monotonic() + RESTORE_IDLE_TIMEOUT_S
                    if m.error():
                        if m.error().code() == KafkaError._PARTITION_EOF:
                            pending.discard(m.partition())  # read_committed: EOF is the last stable offset
                        else:
                            log.warning("restore: %s", m.error())
                        continue
                    records += 1
                    self._apply(fresh[m.partition()], m)
        finally:
            consumer.close()
        cutoff = now_ms() - STATE_RETENTION_MS
        for p, st in fresh.items():
            self.ready = [r for r in self.ready if r[0] != p]
            st.done = {d: t for d, t in st.done.items() if t >= cutoff}
            for doc in list(st.pages):
                pages = st.pages[doc]
                if doc in st.done:  # crashed between marker and tombstones
                    st.pages.pop(doc)
                    self.cleanup += [Output(self.state_topic, page_key(doc, n), None, partition=p)
                                     for n in pages]
                elif len(pages) == next(iter(pages.values())).page_count:
                    self.ready.append((p, doc))  # complete, result not acknowledged before the crash
            self.states[p] = st
        log.info("restored partitions %s from %d state records in %.2fs: %d documents in progress, %d done",
                 partitions, records, time.monotonic() - started,
                 sum(len(fresh[p].pages) for p in partitions), sum(len(fresh[p].done) for p in partitions))

    def _apply(self, st: _PartitionState, m: Message) -> None:
        key = (m.key() or b"").decode("utf-8", "replace")
        try:
            self._apply_record(st, key, m.value())
        except (ValueError, OcrstreamError) as exc:  # only this stage writes the topic: log, never stop
            log.error("restore: unreadable state record %r: %s", key, exc)

    @staticmethod
    def _apply_record(st: _PartitionState, key: str, value: bytes | None) -> None:
        if key.startswith("done/"):
            doc = key[len("done/"):]
            if value is None:
                st.done.pop(doc, None)
            else:
                st.done[doc] = int(orjson.loads(value).get("completed_at", 0))
        elif key.startswith("page/"):
            doc, _, number = key[len("page/"):].rpartition("/")
            if value is None:
                pages = st.pages.get(doc)
                if pages is not None:
                    pages.pop(int(number), None)
                    if not pages:
                        st.pages.pop(doc)
            else:
                st.pages.setdefault(doc, {})[int(number)] = decode(value, PageResult)
        else:
            raise ValueError("unknown key prefix")

    # --- rebalance callbacks (inside consume(), on the poll thread) ---------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.restore([p.partition for p in partitions])
        except (KafkaException, OcrstreamError) as exc:
            # Records of these partitions must not be processed on empty state: rewind first.
            log.error("restore of %s failed (%s): will retry", [p.partition for p in partitions], exc)
            self.needs_rewind = True
        consumer.incremental_assign(partitions)
        log.info("assigned %s", [p.partition for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Each batch is published and committed before the next consume(), so nothing is pending.
        self._drop(partitions)
        consumer.incremental_unassign(partitions)
        log.info("revoked %s", [p.partition for p in partitions])

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop(partitions)
        consumer.incremental_unassign(partitions)
        log.warning("lost %s", [p.partition for p in partitions])

    def _drop(self, partitions: list[TopicPartition]) -> None:
        gone = {p.partition for p in partitions}
        for p in gone:
            self.states.pop(p, None)
        self.ready = [r for r in self.ready if r[0] not in gone]
        self.cleanup = [o for o in self.cleanup if getattr(o, "partition", None) not in gone]

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        """Consume, assemble, publish, commit until stopped; then leave the group.

        Raises:
            KafkaException / DeliveryError: only from the final close; failures
                while running are retried by rewinding.
        """
        self.consumer.subscribe([self.source_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        log.info("assembler consuming %s (state in %s, delivery %s)", self.source_topic, self.state_topic,
                 self.s.delivery)
        http = m.serve_if_configured(self.s.http_port, lambda: bool(self.states))
        try:
            while not self.stop.is_set():
                self.step()
        finally:
            if http:
                http.close()
            self.consumer.close()  # revokes (drops state) and leaves the group
            self.delivery.close()

    def step(self) -> None:
        """One iteration: rewind if needed, else consume a batch, assemble, publish and commit."""
        if self.needs_rewind:
            self._rewind()
            return
        if time.monotonic() >= self.next_prune:
            self._prune()
        msgs = self.consumer.consume(BATCH_MAX, CONSUME_WAIT_S)
        if self.needs_rewind or any(not m.error() and m.partition() not in self.states for m in msgs):
            # A restore inside consume() failed: never process on empty state; the rewind re-reads these.
            self.needs_rewind = True
            return
        batch = _Batch(outputs=self.cleanup)
        self.cleanup = []
        for p, doc in self.ready:
            if p in self.states and doc in self.states[p].pages:
                self._complete(p, doc, batch)
        self.ready = []
        for msg in msgs:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", msg.error())
                continue
            m.MESSAGES_CONSUMED.labels(STAGE).inc()
            self._handle(msg, batch)
            batch.offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        if batch:
            try:
                self._publish(batch)
            except (DeliveryError, KafkaException) as exc:
                log.error("publishing a batch failed (%s): rewinding to the committed offsets", exc)
                self.needs_rewind = True

    def _publish(self, batch: _Batch) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
        if self.delivery.transactional:
            self.delivery.publish(batch.outputs + batch.finals, offsets)
        elif batch.finals:
            # Markers only after the results they stand for are acknowledged (see module docstring).
            self.delivery.publish(batch.outputs, [])
            self.delivery.publish(batch.finals, offsets)
        else:
            self.delivery.publish(batch.outputs, offsets)

    def _rewind(self) -> None:
        """Rebuild the state of every assigned partition and seek them to their committed offsets."""
        try:
            assignment = self.consumer.assignment()
            self.restore([tp.partition for tp in assignment])
            for tp in self.consumer.committed(assignment, timeout=30):
                offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            self.needs_rewind = False
            log.info("rewound %s to the committed offsets", [tp.partition for tp in assignment])
        except (KafkaException, OcrstreamError) as exc:
            log.error("rewind failed (%s): retrying", exc)
            self.stop.event.wait(2.0)

    def _prune(self) -> None:
        cutoff = now_ms() - STATE_RETENTION_MS
        for st in self.states.values():
            st.done = {d: t for d, t in st.done.items() if t >= cutoff}
        self.next_prune = time.monotonic() + PRUNE_INTERVAL_S

    # --- one record ------------------------------------------------------------------
    def _handle(self, msg: Message, batch: _Batch) -> None:
        try:
            result = decode(msg.value(), PageResult)
            key = msg.key().decode("utf-8", "replace") if msg.key() is not None else None
            if key != result.document_id:
                raise OcrstreamError(ReasonCode.INVALID_KEY, f"key {key!r} is not the document_id "
                                     f"{result.document_id!r} (pages of a document must share a partition)")
            if result.page_number > result.page_count:
                raise OcrstreamError(ReasonCode.SCHEMA_VIOLATION,
                                     f"page_number {result.page_number} exceeds page_count {result.page_count}")
            self._accept(msg, result, batch)
        except Exception as exc:  # noqa: BLE001 - bad input (or a bug) must not stop the partition
            if not isinstance(exc, OcrstreamError):
                log.exception("unexpected error on %s[%d]@%d", msg.topic(), msg.partition(), msg.offset())
            log.warning("page result %s[%d]@%d refused: %s", msg.topic(), msg.partition(), msg.offset(), exc)
            dl = dead_letter(msg, exc, STAGE, document_id=guess_document_id(msg.value()))
            m.DEAD_LETTERS.labels(STAGE, dl.reason).inc()
            batch.outputs.append(Output(self.s.topic("dead-letters"), dl.key, encode(dl), dead_letter_headers(dl)))

    def _accept(self, msg: Message, result: PageResult, batch: _Batch) -> None:
        p, doc, number = msg.partition(), result.document_id, result.page_number
        st = self.states[p]
        if doc in st.done:
            log.debug("page %d of finished document %s ignored", number, doc)
            return
        pages = st.pages.get(doc)
        if pages:
            expected = next(iter(pages.values())).page_count
            if result.page_count != expected:
                raise OcrstreamError(ReasonCode.SCHEMA_VIOLATION,
                                     f"page_count {result.page_count} disagrees with {expected} of earlier pages")
            old = pages.get(number)
            if old is not None and old.status == "succeeded" and result.status == "failed":
                log.info("page %d of %s: keeping the earlier succeeded result", number, doc)
                return
        else:
            pages = st.pages[doc] = {}
        pages[number] = result
        batch.outputs.append(Output(self.state_topic, page_key(doc, number), msg.value(), partition=p))
        if len(pages) == result.page_count:
            self._complete(p, doc, batch)

    def _complete(self, p: int, doc: str, batch: _Batch) -> None:
        st = self.states[p]
        pages = st.pages.pop(doc)
        completed_at = now_ms()
        result = assemble(pages.values(), completed_at)
        value = encode(result)
        if len(value) > MAX_RESULT_BYTES:
            log.warning("document %s: result is %d bytes (limit %d): publishing it without detections",
                        doc, len(value), MAX_RESULT_BYTES)
            result = without_detections(result)
            value = encode(result)
        batch.outputs.append(Output(self.s.topic("document-results"), doc, value))
        st.done[doc] = completed_at
        marker = orjson.dumps({"status": result.status, "completed_at": completed_at})
        batch.finals.append(Output(self.state_topic, done_key(doc), marker, partition=p))
        batch.finals += [Output(self.state_topic, page_key(doc, n), None, partition=p) for n in pages]
        self.completed += 1
        log.info("document %s %s (%d pages, %d ms end to end)", doc, result.status, result.page_count,
                 int(result.timings_ms["end_to_end_ms"]))


def build_app(s: Settings, stop: StopFlag | None = None) -> Assembler:
    """The assembler stage, ready to :meth:`~Assembler.run` (state topic ensured).

    Kept under the name of the original faust design; returns an
    :class:`Assembler` instead of a ``faust.App`` (see module docstring).
    """
    return Assembler(s, stop)


def run_assembler(s: Settings, stop: StopFlag | None = None) -> None:
    """Run the assembler stage until SIGTERM/SIGINT (or ``stop``); blocking."""
    Assembler(s, stop).run()


if __name__ == "__main__":  # `ocrstream assembler` is the usual entry point
    from ocrstream.settings import get_settings

    logging.basicConfig(level=get_settings().log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    run_assembler(get_settings())
