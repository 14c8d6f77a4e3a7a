"""Assembler: page results (``page-results``) -> one document result per document (``document-results``).

Why not faust
-------------
The stage was specified on faust-streaming (0.15.3, aiokafka 0.14). At the
protocol level faust works against Apache Kafka 4.1: it joins the group,
creates its changelog topics through the admin API and restores tables after a
restart. But its recovery is racy: ``tables/recovery.py`` resumes the stream
partitions (and the fetcher is already running) *before* it seeks them to their
committed offsets. The experiment is ``bench/faust_experiment/`` (a counter table on
12 partitions, 18 restarts per run with records produced while the app is down, SIGTERM
and SIGKILL, partitions without a committed offset). Six runs on 2026-11-23 gave:

- 38 of 108 restarts where records were processed twice (the seek rewinds records that
  were already handed to the agent), and
- 2 of 108 restarts, both the first start after a SIGKILL, where records were silently
  never processed although the committed offset moved past them (no error logged): once
  the whole backlog of a partition without a committed offset, once a record right after a
  committed offset. The experiment does not show which faust code path drops them.

Duplicates would be harmless here (see "Idempotence"), but a lost page result
means a document that never completes. So the stage is a plain confluent-kafka
consume-transform-produce loop with the same design faust would have had: state
partitioned like the input and backed by a compacted changelog topic.

State and changelog
-------------------
State lives in memory, per input partition, and every change is written to the
compacted topic ``<prefix>assembler-state`` (defined in :mod:`topology`; created by
the stage when missing, with exactly as many partitions as ``page-results``). A change caused by a
record of ``page-results`` partition *p* goes to state partition *p*, so a
newly assigned partition is restored by reading state partition *p* from the
beginning (read_committed) before its records are processed. Keys:

- ``page/<document key>/<page_number>``: the page result, as received. One record
  per page, so no single record grows with the size of a document. The document key is
  ``document_id``, or ``<tenant>/<document_id>`` for a tenant's document
  (:mod:`topology.tenants`); the result goes to that tenant's ``document-results`` topic.
- ``done/<document key>``: a small marker ``{"status", "completed_at"}`` written
  once the document result is acknowledged; the page records are then
  tombstoned.

The topic is ``cleanup.policy=compact`` with no time retention, so no setting can drop an
open document silently. A marker only has to outlive the page results that could be
replayed: after the retention of ``page-results`` (7 days) the assembler tombstones it.

Every document gets a result
----------------------------
A document still missing pages ``OCRSTREAM_DOCUMENT_DEADLINE_S`` after its last page result
(``completed_at`` of the newest page, so the deadline survives restarts and rebalances: it
comes back with the page records) gets a ``failed`` result with code ``incomplete`` and the
pages that did arrive, and an ``inc/<document_id>`` marker in the state topic so it is
published once. A backlog must not cause false ``incomplete`` results, so the deadline is
only acted on when nothing upstream still holds work for the document: this assembler's
input partition is read to its end (position = high watermark), and the OCR worker group's
committed offsets on the page-topic partitions of the missing pages (the placement the page
results carry, :attr:`schemas.PageTask.placement`) are at their high watermarks. The page topic
and worker group are the document's: those of the page results' ``profile`` and ``lane``
(:func:`topology.pages.page_topic`, :func:`topology.pages.worker_group`; ``pages`` and ``worker``
when absent). While either has lag the document waits, however long. A page that arrives
after ``incomplete`` is stored as usual; when it completes the document, the complete result
replaces the incomplete one (last value per key in ``document-results``).

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

Result cache
------------
A succeeded document whose page results all carry one ``cache_key`` (set by the workers when
the splitter asked for it, :mod:`ocrstream.result_cache`) is also written to the compacted
``result-cache`` topic (:class:`~schemas.CachedResult`), in the same batch as its result
(same transaction in exactly-once mode); its result names the key (``cache_key``). Failed,
incomplete and too-large documents are never cached.

Failures follow the stage runtime's policy (:mod:`ocrstream.streaming.loop`): an aborted
transaction rewinds (state is rebuilt from the changelog and the partitions are sought to
their committed offsets), a record that cannot be handled becomes a dead letter.

A partition is restored inside the rebalance callback, before its first record
is processed (about 1 s plus the time to read its changelog). Memory: the page
results of documents in progress, plus one done marker (document id + time)
per document finished within the retention.

Shadow copies
-------------
A document sampled for shadow traffic (:mod:`consumers.routing`) has a second set of page tasks,
OCR'd by another model profile, marked ``shadow`` and keyed ``<document key>~shadow``
(:mod:`topology.shadow`). Here it is a document of its own: its pages, done marker and
``incomplete`` marker are under that key, so neither copy completes, replaces or closes the
other. Its result (``shadow: true``, also an ``incomplete`` one) goes to ``shadow-results``, keyed
by the real document key, and never to a ``document-results`` topic: what the shadow profile
reads, or fails to read, never reaches the document's user.

Requested pages
---------------
A document submitted with page ranges (``DocumentRef.pages``) has page tasks, and page results,
only for those pages: ``page_range`` names them, ``page_count`` is their number. The document is
complete when those pages are in; its result lists exactly them (``page_count`` = their number,
``page_range`` echoed), each with its own page number.

Bad input
---------
A value that fails ``decode`` (``invalid_json``, ``schema_violation``,
``unsupported_schema_version``), a key that is not the ``document_id``
(``invalid_key``: pages of one document must share a partition), a
``page_number`` that is not one of the document's pages (above ``page_count``, or
outside ``page_range`` for a document of requested pages), a ``page_range`` that does not
parse or hold ``page_count`` pages, or a ``page_count`` / ``page_range`` that disagrees with
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
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import NewTopic
from confluent_kafka import ConsumerGroupTopicPartitions

from ocrstream import metrics as m
from ocrstream import result_cache as rc
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import make_admin, topic_partitions
from ocrstream.page_ranges import parse_page_ranges
from ocrstream.settings import Settings
from ocrstream.streaming import Output, StageRuntime, StopFlag, now_ms, run_stage
from ocrstream.streaming.changelog import read_partitions
from ocrstream.streaming.loop import RecordContext
from schemas import CachedResult, DocumentResult, Error, Page, PageResult, decode, encode
from topology import (DEFAULT_LANE, DEFAULT_PROFILE, SHADOW_RESULTS, document_key, page_partition, page_topic,
                      placed_partition, shadow_key, split_document_key, split_shadow_key, topic_specs, worker_group)

from .result_cache import TOPIC as CACHE_TOPIC

log = logging.getLogger(__name__)

STAGE = "assembler"
STATE_TOPIC = "assembler-state"  # logical name; full name is s.topic(STATE_TOPIC)
BATCH_MAX = 500  # records per consume() call, published and committed together
CONSUME_WAIT_S = 0.1  # consume() waits this long for a full batch: bounds the latency it adds
PRUNE_INTERVAL_S = 600.0  # how often expired done markers are tombstoned

_SPECS = {t.name: t for t in topic_specs()}
MAX_RESULT_BYTES = int(_SPECS["document-results"].config["max.message.bytes"])
MAX_CACHE_BYTES = int(_SPECS[CACHE_TOPIC].config["max.message.bytes"])
RECORD_OVERHEAD_BYTES = 4096  # key, headers and record framing beside the value (librdkafka counts them all)


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
        Source, engine and ``webhook_url`` (the completion callback, see ``consumers/webhooks.py``)
        are those of the lowest-numbered page; ``page_count`` and ``page_range`` are the pages' (a
        document of requested pages: their number and ranges).

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
        page_count=first.page_count, page_range=first.page_range, profile=first.profile, shadow=first.shadow,
        pages=[Page.model_construct(**{f: getattr(p, f) for f in page_fields}) for p in ordered],
        engine=first.engine, timings_ms=dict(timings), submitted_at=submitted_at, completed_at=completed_at,
        webhook_url=first.webhook_url,
    )


def expected_pages(result: PageResult) -> range | list[int]:
    """The page numbers of ``result``'s document: those of its ``page_range`` (the requested
    pages), else 1..``page_count``.

    Raises:
        OcrstreamError: ``schema_violation``: a ``page_range`` that does not parse, or does not
            hold ``page_count`` pages (records are not trusted more than their writer).
    """
    if result.page_range is None:
        return range(1, result.page_count + 1)
    try:
        ranges = parse_page_ranges(result.page_range)
    except OcrstreamError as exc:
        raise OcrstreamError(ReasonCode.SCHEMA_VIOLATION, f"page_range: {exc.message}") from None
    if sum(b - a + 1 for a, b in ranges) != result.page_count:
        raise OcrstreamError(ReasonCode.SCHEMA_VIOLATION,
                             f"page_range {result.page_range!r} does not hold page_count {result.page_count} pages")
    return [n for a, b in ranges for n in range(a, b + 1)]


def without_detections(result: DocumentResult) -> DocumentResult:
    """A ``failed`` (``result_too_large``) copy of a result too large for its topic: pages keep
    their status, size and timings, detections are dropped."""
    size_error = Error(code=ReasonCode.RESULT_TOO_LARGE.value,
                       message=f"document result exceeds {MAX_RESULT_BYTES} bytes; detections dropped")
    return result.model_copy(update={
        "status": "failed", "error": size_error,
        "pages": [p.model_copy(update={"detections": []}) for p in result.pages],
    })


def pipeline_key(result: PageResult) -> str:
    """The key of ``result``'s document in ``page-results`` and in the assembler's state: the
    document key, :func:`topology.shadow_key` of it for a shadow copy's page."""
    key = document_key(result.tenant, result.document_id)
    return shadow_key(key) if result.shadow else key


def page_key(document_id: str, page_number: int) -> str:
    """State-topic key of one page record."""
    return f"page/{document_id}/{page_number}"


def done_key(document_id: str) -> str:
    """State-topic key of a document's done marker."""
    return f"done/{document_id}"


# --- state topic ---------------------------------------------------------------------------

def ensure_state_topic(s: Settings, timeout_s: float = 30.0) -> int:
    """Create the state topic when missing (``ocrstream topics apply`` normally has: it is in
    :mod:`topology`); returns its partition count.

    It gets the partition count and replication factor of ``page-results``
    (state partition *p* holds the state of input partition *p*) and the configs of its
    topology spec.

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
        config = {**_SPECS[STATE_TOPIC].config, "min.insync.replicas": str(min(2, rf))}
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
    incomplete: set[str] = field(default_factory=set)  # docs given an `incomplete` result, still open


@dataclass
class _Batch:
    outputs: list[Output] = field(default_factory=list)  # results, dead letters, page records
    finals: list[Output] = field(default_factory=list)  # done markers + tombstones (after outputs are acked)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to read

    def __bool__(self) -> bool:
        return bool(self.outputs or self.finals or self.offsets)


def incomplete_key(document_id: str) -> str:
    """State-topic key of the marker of a document given an ``incomplete`` result."""
    return f"inc/{document_id}"


class Assembler:
    """The assembler stage (see module docstring), on the shared stage runtime.

    Args:
        s: settings (``delivery``, ``document_deadline_s``).
        stop: stop flag (default: installs SIGTERM/SIGINT handlers when in the main thread).

    Raises:
        RuntimeError: from the constructor, when the state topic cannot be used
            (see :func:`ensure_state_topic`).
    """

    def __init__(self, s: Settings, stop: StopFlag | None = None):
        self.s = s
        self.source_topic = s.topic("page-results")
        self.state_topic = s.topic(STATE_TOPIC)
        self.partitions = ensure_state_topic(s)
        self.rt = StageRuntime(s, STAGE, [self.source_topic], stop=stop, on_assign=self._on_assign,
                               on_revoke=self._drop, on_lost=self._drop, on_rewind=self._on_rewind,
                               # A refused page result gets a dead letter only: a failed *document*
                               # result could overwrite the good result of a finished document. Its
                               # document gets `incomplete` at the deadline if the page never comes.
                               ready=lambda: bool(self.states), results_topic=None)
        self.stop = self.rt.stop
        self.states: dict[int, _PartitionState] = {}
        self.ready: list[tuple[int, str]] = []  # (partition, doc) complete after a restore, not yet published
        self.cleanup: list[Output] = []  # tombstones for leftovers found during a restore
        self.needs_rewind = False
        self.next_prune = time.monotonic() + PRUNE_INTERVAL_S
        self.next_sweep = time.monotonic() + self._sweep_interval()
        self.completed = 0  # documents published by this instance
        self.admin = make_admin(s)

    def _sweep_interval(self) -> float:
        return min(30.0, max(0.5, self.s.document_deadline_s / 10))

    # --- restore ------------------------------------------------------------------
    def restore(self, partitions: list[int]) -> None:
        """Rebuild the state of ``partitions`` from the state topic (replacing what is in memory).

        Raises:
            OcrstreamError: ``storage_error`` (transient) when the changelog stops answering.
        """
        if not partitions:
            return
        started = time.monotonic()
        fresh = {p: _PartitionState() for p in partitions}
        records = 0
        for msg in read_partitions(self.s, self.state_topic, partitions):
            records += 1
            self._apply(fresh[msg.partition()], msg)
        for p, st in fresh.items():
            self.ready = [r for r in self.ready if r[0] != p]
            for doc in list(st.pages):
                pages = st.pages[doc]
                if doc in st.done:  # crashed between marker and tombstones
                    st.pages.pop(doc)
                    self.cleanup += [Output(self.state_topic, page_key(doc, n), None, partition=p) for n in pages]
                elif len(pages) == next(iter(pages.values())).page_count:
                    self.ready.append((p, doc))  # complete, result not acknowledged before the crash
            st.incomplete &= set(st.pages)
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
        elif key.startswith("inc/"):
            doc = key[len("inc/"):]
            (st.incomplete.discard if value is None else st.incomplete.add)(doc)
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
    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        try:
            self.restore([p.partition for p in partitions])
        except (KafkaException, OcrstreamError) as exc:
            # Records of these partitions must not be processed on empty state: rewind first.
            log.error("restore of %s failed (%s): will retry", [p.partition for p in partitions], exc)
            self.needs_rewind = True

    def _drop(self, partitions: list[TopicPartition]) -> None:
        # Each batch is published and committed before the next consume(), so nothing is pending.
        gone = {p.partition for p in partitions}
        for p in gone:
            self.states.pop(p, None)
        self.ready = [r for r in self.ready if r[0] not in gone]
        self.cleanup = [o for o in self.cleanup if o.partition not in gone]

    def _on_rewind(self, partitions: list[TopicPartition]) -> None:
        self.restore([tp.partition for tp in partitions])

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        """Consume, assemble, publish, commit until stopped; then leave the group.

        Raises:
            FatalKafkaError: see :mod:`ocrstream.streaming.loop`.
        """
        self.rt.start()
        try:
            while not self.stop.is_set():
                self.step()
        finally:
            self.rt.close()  # revokes (drops state) and leaves the group

    def step(self) -> None:
        """One iteration: rewind if needed, else consume a batch, assemble, publish and commit."""
        if self.needs_rewind:
            try:
                self.rt.rewind()
                self.needs_rewind = False
            except (OcrstreamError, KafkaException) as exc:
                log.error("rewind failed (%s): retrying", exc)
                self.stop.event.wait(2.0)
            return
        batch = _Batch(outputs=self.cleanup)
        self.cleanup = []
        if time.monotonic() >= self.next_prune:
            self._prune(batch)
        msgs = self.rt.consume(BATCH_MAX, CONSUME_WAIT_S)
        if self.needs_rewind or any(m.partition() not in self.states for m in msgs):
            # A restore inside consume() failed: never process on empty state; the rewind re-reads these.
            self.needs_rewind = True
            return
        for p, doc in self.ready:
            if p in self.states and doc in self.states[p].pages:
                self._complete(p, doc, batch)
        self.ready = []
        for msg in msgs:
            batch.outputs += self.rt.guard(msg, lambda msg, ctx: self._handle(msg, ctx, batch))
            batch.offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        if time.monotonic() >= self.next_sweep:
            self._expire(batch)
        if batch:
            self._publish(batch)

    def _publish(self, batch: _Batch) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
        if self.rt.delivery.transactional:
            ok = self.rt.publish(batch.outputs + batch.finals, offsets)
        elif batch.finals:
            # Markers only after the results they stand for are acknowledged (see module docstring).
            ok = self.rt.publish(batch.outputs, []) and self.rt.publish(batch.finals, offsets)
        else:
            ok = self.rt.publish(batch.outputs, offsets)
        if not ok and not self.rt.delivery.transactional:
            # Offsets of moved partitions were not committed: their new owner replays them.
            log.warning("batch not committed: the partitions moved")

    def _prune(self, batch: _Batch) -> None:
        """Tombstone done markers older than the page-results retention (no page result that
        could be replayed is older), so the compacted state topic does not grow forever."""
        # Done markers must outlive the page results that could be replayed (same retention,
        # OCRSTREAM_PIPELINE_RETENTION_H). The state topic itself has no time retention.
        cutoff = now_ms() - self.s.retention().pipeline_ms
        for p, st in self.states.items():
            for doc in [d for d, t in st.done.items() if t < cutoff]:
                st.done.pop(doc)
                batch.outputs.append(Output(self.state_topic, done_key(doc), None, partition=p))
        self.next_prune = time.monotonic() + PRUNE_INTERVAL_S

    # --- one record ------------------------------------------------------------------
    def _handle(self, msg: Message, ctx: RecordContext, batch: _Batch) -> list[Output]:
        """Store one page result (and complete its document); returns nothing of its own: the
        outputs go to ``batch``. Raises what the runtime turns into a dead letter."""
        key = msg.key().decode("utf-8", "replace") if msg.key() is not None else None
        tenant = split_document_key(key)[0] if key is not None else None
        if tenant is not None and tenant not in self.s.tenants:  # the assembler's failures are dead letters only
            raise OcrstreamError(ReasonCode.FORBIDDEN_SOURCE, f"tenant {tenant!r} is not configured (OCRSTREAM_TENANTS)")
        result = decode(msg.value(), PageResult)
        ctx.document_id = result.document_id
        if key != pipeline_key(result):
            raise OcrstreamError(ReasonCode.INVALID_KEY, f"key {key!r} is not the document key "
                                 f"{pipeline_key(result)!r} "
                                 f"(pages of a document must share a partition)")
        if result.page_count > self.s.max_pages:
            # The splitter refuses such documents (too_many_pages): a crafted count must not make
            # the assembler enumerate a billion expected pages.
            raise OcrstreamError(ReasonCode.SCHEMA_VIOLATION, f"page_count {result.page_count} is over "
                                 f"OCRSTREAM_MAX_PAGES ({self.s.max_pages})")
        expected = expected_pages(result)
        if result.page_number not in expected:
            raise OcrstreamError(ReasonCode.SCHEMA_VIOLATION,
                                 f"page_number {result.page_number} is not one of the document's pages "
                                 f"({result.page_range or f'1-{result.page_count}'})")
        self._accept(msg, result, batch)
        return []

    def _accept(self, msg: Message, result: PageResult, batch: _Batch) -> None:
        # the state is keyed by the document key: the same document_id of two tenants never meets,
        # nor a document and its shadow copy
        p, doc, number = msg.partition(), pipeline_key(result), result.page_number
        st = self.states[p]
        if doc in st.done:
            log.debug("page %d of finished document %s ignored", number, doc)
            return
        pages = st.pages.get(doc)
        if pages:
            earlier = next(iter(pages.values()))
            if (result.page_count, result.page_range) != (earlier.page_count, earlier.page_range):
                raise OcrstreamError(ReasonCode.SCHEMA_VIOLATION,
                                     f"page_count {result.page_count} / page_range {result.page_range} disagree "
                                     f"with {earlier.page_count} / {earlier.page_range} of earlier pages")
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
        cache = self._cache_key(result, pages.values())
        if cache is not None:
            result = result.model_copy(update={"cache_key": cache})
        value = encode(result)
        if len(value) + len(doc) + RECORD_OVERHEAD_BYTES > MAX_RESULT_BYTES:
            log.warning("document %s: result is %d bytes (limit %d): publishing it without detections",
                        doc, len(value), MAX_RESULT_BYTES)
            result, cache = without_detections(result).model_copy(update={"cache_key": None}), None
            value = encode(result)
        batch.outputs.append(self._result_output(doc, value))
        if cache is not None:  # never for a shadow copy: its page tasks carry no cache request
            self._cache(cache, split_document_key(doc)[0], result, completed_at, batch)
        st.done[doc] = completed_at
        marker = orjson.dumps({"status": result.status, "completed_at": completed_at})
        batch.finals.append(Output(self.state_topic, done_key(doc), marker, partition=p))
        batch.finals += [Output(self.state_topic, page_key(doc, n), None, partition=p) for n in pages]
        if doc in st.incomplete:  # the complete result replaces the incomplete one
            st.incomplete.discard(doc)
            batch.finals.append(Output(self.state_topic, incomplete_key(doc), None, partition=p))
        self.completed += 1
        log.info("document %s %s (%d pages, %d ms end to end)", doc, result.status, result.page_count,
                 int(result.timings_ms["end_to_end_ms"]))

    # --- the result cache (ocrstream/result_cache.py, consumers/result_cache.py) -------------
    def _cache_key(self, result: DocumentResult, pages: Iterable[PageResult]) -> str | None:
        """The key to store ``result`` under: the one cache key all its pages carry (each worker
        made it with its own output fingerprint), for a succeeded document while the cache is on;
        else None (pages of workers configured differently, or a splitter without the cache)."""
        if result.status != "succeeded" or not rc.enabled(self.s):
            return None
        keys = {r.cache_key for r in pages}
        return keys.pop() if len(keys) == 1 and None not in keys else None

    def _cache(self, key: str, tenant: str | None, result: DocumentResult, completed_at: int, batch: _Batch) -> None:
        """Store ``result`` in the result-cache topic (with the document result: same batch, same
        transaction in exactly-once mode), unless the entry would not fit the topic."""
        entry = encode(CachedResult(cache_key=key, tenant=tenant, written_at=completed_at, result=result))
        if len(entry) + len(key) + RECORD_OVERHEAD_BYTES > MAX_CACHE_BYTES:
            m.RESULT_CACHE_WRITES.labels("too_large").inc()
            log.info("document %s: cache entry is %d bytes (limit %d): not cached", result.document_id, len(entry),
                     MAX_CACHE_BYTES)
            return
        batch.outputs.append(Output(self.s.topic(CACHE_TOPIC), key, entry))
        m.RESULT_CACHE_WRITES.labels("written").inc()
    def _result_output(self, doc: str, value: bytes) -> Output:
        """The document result record of pipeline key ``doc``: on the tenant's ``document-results``
        keyed by ``document_id``, or for a shadow copy on ``shadow-results`` keyed by the real
        document key (never on a results topic users read)."""
        real, shadow = split_shadow_key(doc)
        if shadow:
            return Output(self.s.topic(SHADOW_RESULTS), real, value)
        tenant, document_id = split_document_key(real)
        return Output(self.s.tenant_topic(tenant, "document-results"), document_id, value)

    # --- the deadline ------------------------------------------------------------------
    def _expire(self, batch: _Batch) -> None:
        """Give documents past the deadline an ``incomplete`` result (see module docstring)."""
        self.next_sweep = time.monotonic() + self._sweep_interval()
        cutoff = now_ms() - int(self.s.document_deadline_s * 1000)
        due = [(p, doc, pages) for p, st in self.states.items() for doc, pages in st.pages.items()
               if doc not in st.incomplete and max(r.completed_at for r in pages.values()) < cutoff]
        if not due:
            return
        try:
            # Upstream first, then our own input: a page result the workers commit between the two
            # reads is then already in our partition's high watermark.
            idle = {key: self._idle_pages_partitions(*key) for key in {self._page_topic(pages) for _, _, pages in due}}
            caught_up = self._inputs_caught_up({p for p, _, _ in due})
        except KafkaException as exc:
            log.warning("deadline check postponed: lag unknown (%s)", exc)
            return
        for p, doc, pages in due:
            count, idle_partitions = idle[self._page_topic(pages)]
            missing = [n for n in expected_pages(next(iter(pages.values()))) if n not in pages]
            upstream = self._upstream(doc, pages, missing, count)
            if p not in caught_up or not upstream <= idle_partitions:
                continue  # a backlog still holds work for this document: no false `incomplete`
            self._incomplete(p, doc, pages, missing, batch)

    def _page_topic(self, pages: dict[int, PageResult]) -> tuple[str, str]:
        """``(page topic, worker group)`` (full names) that held the document's page tasks: from its
        page results' profile and lane (:mod:`topology.pages`). A profile or lane this version does
        not know (a bad record) counts as the default's ``pages``."""
        first = next(iter(pages.values()))
        profile = first.profile or DEFAULT_PROFILE
        try:
            lane = first.lane or DEFAULT_LANE
            return self.s.page_topic(profile, lane), self.s.group(worker_group(profile, lane))
        except ValueError:
            return self.s.topic(page_topic()), self.s.group(worker_group())

    @staticmethod
    def _upstream(doc: str, pages: dict[int, PageResult], missing: list[int], partitions: int) -> set[int]:
        """The ``pages`` partitions that hold the page tasks of ``missing``: from the placement the
        page results carry (every one seen: a replayed ingest record may have been placed anew),
        else (older records) from the former fixed placement, else (partition count unknown) none.
        A placement naming a partition beyond ``partitions`` stands for all of them."""
        placements = {tuple(r.placement) for r in pages.values() if r.placement}
        if placements:
            upstream = {placed_partition(list(pl), n) for pl in placements for n in missing}
            # a partition that does not exist (a bad record): wait for all of them rather than forever
            return set(range(partitions)) if partitions and max(upstream) >= partitions else upstream
        document_id = split_document_key(split_shadow_key(doc)[0])[1]  # pages were placed by document_id
        return {page_partition(document_id, n, partitions) for n in missing} if partitions else set()

    def _incomplete(self, p: int, doc: str, pages: dict[int, PageResult], missing: list[int], batch: _Batch) -> None:
        result = assemble(pages.values(), now_ms())
        first_missing = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        result = result.model_copy(update={"status": "failed", "error": Error(
            code=ReasonCode.INCOMPLETE.value,
            message=f"pages {first_missing} missing {self.s.document_deadline_s:.0f}s after the last page result")})
        batch.outputs.append(self._result_output(doc, encode(result)))
        batch.finals.append(Output(self.state_topic, incomplete_key(doc), b"{}", partition=p))
        self.states[p].incomplete.add(doc)
        m.DOCUMENTS_INCOMPLETE.inc()
        log.warning("document %s incomplete: pages %s missing", doc, first_missing)

    def _inputs_caught_up(self, partitions: set[int]) -> set[int]:
        """Those of ``partitions`` whose page results this assembler has all read."""
        tps = [TopicPartition(self.source_topic, p) for p in partitions]
        positions = self.rt.consumer.position(tps)
        unknown = [tp for tp in positions if tp.offset < 0]  # nothing read since the assign or seek
        committed = {tp.partition: tp.offset for tp in (self.rt.consumer.committed(unknown, timeout=10)
                                                        if unknown else [])}
        out = set()
        for tp in positions:
            low, high = self.rt.consumer.get_watermark_offsets(tp, timeout=10)
            pos = tp.offset if tp.offset >= 0 else committed.get(tp.partition, -1)
            if pos >= high or (pos < 0 and high == low):
                out.add(tp.partition)
        return out

    def _idle_pages_partitions(self, pages_topic: str, group: str) -> tuple[int, set[int]]:
        """``(partition count of the page topic, its partitions where the worker group has committed
        everything)``: pages there are all OCR'd and their results published.

        Raises:
            KafkaException: the topic or the group's offsets cannot be read.
        """
        parts = topic_partitions(self.admin, pages_topic, 10)
        tps = [TopicPartition(pages_topic, p) for p in parts]
        request = ConsumerGroupTopicPartitions(group, tps)
        committed = self.admin.list_consumer_group_offsets([request])[group].result(10)
        offsets = {tp.partition: tp.offset for tp in committed.topic_partitions}
        # In exactly-once mode the splitter writes `pages` in transactions, so a partition ends with
        # a commit marker that no consumer ever reads: a worker that processed everything commits
        # high - 1. (A mixed deployment with a non-transactional splitter would make this optimistic.)
        slack = 1 if self.rt.delivery.transactional else 0
        idle = set()
        for tp in tps:
            low, high = self.rt.consumer.get_watermark_offsets(tp, timeout=10)
            if high == low or offsets.get(tp.partition, -1) >= high - slack:
                idle.add(tp.partition)
        return len(parts), idle


def build_app(s: Settings, stop: StopFlag | None = None) -> Assembler:
    """The assembler stage, ready to :meth:`~Assembler.run` (state topic ensured).

    Kept under the name of the original faust design; returns an
    :class:`Assembler` instead of a ``faust.App`` (see module docstring).
    """
    return Assembler(s, stop)


def run_assembler(s: Settings, stop: StopFlag | None = None) -> int:
    """Run the assembler stage until SIGTERM/SIGINT (or ``stop``); returns the exit status."""
    return run_stage(lambda: Assembler(s, stop))
