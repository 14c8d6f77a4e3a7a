"""The gateway's view of the compacted results topics: latest value per document, in memory.

One :class:`ResultsTailer` per gateway process reads every partition of the results topic of
each tenant the gateway serves (by assignment, no consumer group to rebalance or commit,
``read_committed``), from the beginning, and keeps following it. HTTP requests read the
:class:`ResultsTable`; no request creates a consumer.

The table is bounded in two tiers:

- **index** (every document seen): ``(tenant, document_id) -> (topic, partition, offset, size)``
  of its latest record, a few hundred bytes a document (about 400 measured: 4.5 million documents
  in 2 GiB). A tombstone removes the entry.
- **cache** (the most recent results, at most ``OCRSTREAM_GATEWAY_RESULTS_CACHE_BYTES`` of JSON):
  the record's value bytes, least recently stored or read first out. A result that fell out is
  read again from the topic by its offset (:meth:`ResultsTable.get`), with one shared fetch
  consumer per process, then cached again. Compaction keeps the latest record of a key, so the
  indexed offset stays readable; after time retention deleted it the document reads as unknown.

A third, small structure remembers the ids this process accepted (``OCRSTREAM_GATEWAY_PENDING_IDS``,
most recent), so that their status is ``pending`` rather than 404 until a result arrives.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from ocrstream.kafka import consumer_config, read_at, topic_partitions, watermarks
from ocrstream.metrics import GATEWAY_RESULTS
from ocrstream.settings import Settings

log = logging.getLogger(__name__)

DocKey = tuple[str | None, str]
"""``(tenant or None for the default tenant, document_id)``."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where a document's latest result record is: ``topic``, ``partition``, ``offset``; ``size``
    is its value's length (bytes)."""

    topic: str
    partition: int
    offset: int
    size: int


class ResultsTable:
    """Thread-safe latest-result table (see module docstring).

    Args:
        cache_bytes: most value bytes kept in the cache tier (0: none, every read fetches).
        pending_ids: most accepted-but-unfinished ids remembered.
        fetch: ``Location -> bytes | None`` reading one record by offset (None: gone); default:
            none (a result out of the cache then reads as unknown).
    """

    def __init__(self, cache_bytes: int, pending_ids: int, fetch=None):
        self.cache_bytes = cache_bytes
        self.pending_ids = pending_ids
        self.fetch = fetch
        self._lock = threading.Lock()
        self._index: dict[DocKey, Location] = {}
        self._cache: OrderedDict[DocKey, bytes] = OrderedDict()
        self._cached = 0  # bytes in _cache
        self._accepted: OrderedDict[DocKey, None] = OrderedDict()

    def put(self, key: DocKey, loc: Location, value: bytes | None) -> None:
        """Record the latest record of ``key``: a result (``value``) or a tombstone (None)."""
        with self._lock:
            self._uncache(key)
            if value is None:  # a deletion request: the document is gone, pending or not
                self._index.pop(key, None)
                self._accepted.pop(key, None)
            else:
                self._index[key] = loc
                self._accepted.pop(key, None)
                self._cache_put(key, value)
            self._gauges()

    def accept(self, key: DocKey) -> None:
        """Remember that this process accepted ``key`` (answered ``pending`` until its result)."""
        with self._lock:
            if key in self._index or not self.pending_ids:
                return
            self._accepted[key] = None
            self._accepted.move_to_end(key)
            while len(self._accepted) > self.pending_ids:
                self._accepted.popitem(last=False)
            self._gauges()

    def get(self, key: DocKey) -> bytes | str | None:
        """The latest result value of ``key`` (bytes), ``"pending"`` (accepted here, no result
        yet), or None (unknown, deleted, or its record no longer readable).

        Raises:
            KafkaException: reading an evicted result from the topic failed.
        """
        with self._lock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
                return value
            loc = self._index.get(key)
            if loc is None:
                return "pending" if key in self._accepted else None
        value = self.fetch(loc) if self.fetch else None  # outside the lock: a broker round trip
        with self._lock:
            if self._index.get(key) != loc:
                newer = True  # a newer record (or a tombstone) arrived meanwhile: that one counts
            else:
                newer = False
                if value is not None:
                    self._cache_put(key, value)
                    self._gauges()
        return self.get(key) if newer else value

    def counts(self) -> dict[str, int]:
        """``{"indexed": documents, "cached": results in memory, "cached_bytes": their bytes,
        "pending": accepted ids without a result}``."""
        with self._lock:
            return {"indexed": len(self._index), "cached": len(self._cache), "cached_bytes": self._cached,
                    "pending": len(self._accepted)}

    # --- under the lock ---------------------------------------------------------------
    def _uncache(self, key: DocKey) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached -= len(old)

    def _cache_put(self, key: DocKey, value: bytes) -> None:
        self._uncache(key)
        if len(value) > self.cache_bytes:
            return  # larger than the whole cache: read by offset each time
        self._cache[key] = value
        self._cached += len(value)
        while self._cached > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)

    def _gauges(self) -> None:
        GATEWAY_RESULTS.labels("indexed").set(len(self._index))
        GATEWAY_RESULTS.labels("cached").set(len(self._cache))
        GATEWAY_RESULTS.labels("pending").set(len(self._accepted))


class RecordFetcher:
    """Reads one record by (topic, partition, offset) with one consumer shared by every request
    (serialized by a lock: evicted results are the slow path)."""

    def __init__(self, s: Settings, timeout_s: float = 10.0):
        self.timeout_s = timeout_s
        self.consumer = Consumer(consumer_config(s, f"{s.group('gateway')}-fetch-{uuid.uuid4().hex[:8]}",
                                                 **{"enable.partition.eof": True}))
        self._lock = threading.Lock()

    def __call__(self, loc: Location) -> bytes | None:
        """The value at ``loc``, or None when that offset holds no result any more (retention).

        Raises:
            KafkaException: the record could not be read within the timeout.
        """
        with self._lock:
            return read_at(self.consumer, loc.topic, loc.partition, loc.offset, self.timeout_s, poll_s=0.2)

    def close(self) -> None:
        self.consumer.close()


class ResultsTailer:
    """The background consumer filling a :class:`ResultsTable` from the results topics of
    ``tenants`` (None: the default tenant's plain topic).

    :attr:`caught_up` is set once every partition's position reached the high watermark it had
    when the tailer started (readiness: results accepted before the restart are known).

    Raises (constructor):
        KafkaException: a results topic does not exist (after 30 s).
    """

    def __init__(self, s: Settings, tenants: list[str | None], table: ResultsTable):
        self.s = s
        self.table = table
        self.consumer = Consumer(consumer_config(s, f"{s.group('gateway')}-{uuid.uuid4().hex[:8]}",
                                                 **{"enable.partition.eof": True}))
        self.tenant_of: dict[str, str | None] = {s.tenant_topic(t, "document-results"): t for t in tenants}
        parts = [TopicPartition(topic, p, OFFSET_BEGINNING) for topic in self.tenant_of
                 for p in topic_partitions(self.consumer, topic)]
        # The ends seen at start: readiness waits for these, not for a moving target.
        self.start_ends = {(tp.topic, tp.partition): watermarks(self.consumer, tp)[1] for tp in parts}
        self.consumer.assign(parts)
        self.caught_up = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gateway-results", daemon=True)
        self.records = 0

    def start(self) -> "ResultsTailer":
        self.thread.start()
        return self

    def _run(self) -> None:
        remaining = {tp for tp, end in self.start_ends.items() if end > 0}
        if not remaining:
            self.caught_up.set()
        while not self.stop.is_set():
            try:
                msgs = self.consumer.consume(500, 0.2)
            except KafkaException as exc:  # e.g. all brokers down: librdkafka reconnects
                log.warning("results tailer: %s", exc)
                time.sleep(1)
                continue
            for msg in msgs:
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        # At the end, past any transaction marker (never returned as a record):
                        # caught up even while other partitions keep the poll busy.
                        remaining.discard((msg.topic(), msg.partition()))
                    else:
                        log.warning("results tailer: %s", msg.error())
                    continue
                self._apply(msg)
                if remaining and msg.offset() + 1 >= self.start_ends.get((msg.topic(), msg.partition()), 0):
                    remaining.discard((msg.topic(), msg.partition()))
            if remaining and not msgs:
                # Transaction markers are never returned as records: ask for the positions.
                for tp in self.consumer.position([TopicPartition(t, p) for t, p in remaining]):
                    if tp.offset >= self.start_ends[(tp.topic, tp.partition)]:
                        remaining.discard((tp.topic, tp.partition))
            if not remaining and not self.caught_up.is_set():
                log.info("results tailer caught up: %s", self.table.counts())
                self.caught_up.set()

    def _apply(self, msg) -> None:
        key = (msg.key() or b"").decode(errors="replace")
        loc = Location(msg.topic(), msg.partition(), msg.offset(), len(msg.value() or b""))
        value = msg.value()
        if value is not None:
            # A cheap check, not the full model (that is validated when a request renders it):
            # at start the tailer reads the whole topic.
            try:
                doc = orjson.loads(value)
                ok = isinstance(doc, dict) and doc.get("schema") == "document_result" and doc.get("document_id") == key
            except orjson.JSONDecodeError:
                ok = False
            if not ok:
                log.warning("results tailer: %s[%d]@%d is not a document result for key %r; skipped",
                            msg.topic(), msg.partition(), msg.offset(), key)
                return
        self.records += 1
        self.table.put((self.tenant_of.get(msg.topic()), key), loc, value)

    def close(self) -> None:
        """Stop the thread and close the consumer."""
        self.stop.set()
        self.thread.join(10)
        self.consumer.close()
