"""The splitter's side of the content-hash result cache: an index of the ``result-cache`` topic
and the cache hit (the key scheme: :mod:`ocrstream.result_cache`).

The assembler writes every succeeded document whose pages all carry one cache key to the
compacted topic ``result-cache`` (key: the cache key, value: :class:`~schemas.CachedResult`,
the whole result; ``compact,delete`` with retention = ``OCRSTREAM_RESULT_CACHE_TTL_H``). Each
splitter process keeps :class:`ResultCacheIndex`: a background consumer, assigned every
partition from the beginning (no group, no commits, ``read_committed`` so an aborted
transaction's entry never counts), maps each key to the partition, offset and timestamp of its
latest record; a tombstone (``ocrstream delete``) removes it. Values stay in the topic: a hit
reads its one record by offset, so memory is the index only (about 250 bytes a key).

Never wrong, may miss:

- before the index has read an entry (a restart, or the second copy of a document submitted
  while the first is still in OCR) the lookup misses and the document is OCR'd; its result is
  stored again under the same key (compaction keeps the last);
- an entry older than the TTL (by its ``written_at``; retention deletes whole segments later),
  an entry whose record is gone (compacted away, deleted), one that cannot be read within
  :data:`FETCH_TIMEOUT_S`, or one that disagrees with the request (tenant, key, pages, DPI,
  status) is a miss, never a failed document.

A hit costs the download and hash of the document (the splitter reads it anyway to count its
pages) plus one fetch; it publishes the document's result at once, with ``cache_hit: true``,
``cached_from`` (the document whose OCR produced the pages) and this request's id, source and
times. In exactly-once mode it is one more output of the splitter's transaction.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from ocrstream import metrics as m
from ocrstream.errors import OcrstreamError
from ocrstream.kafka import consumer_config, topic_partitions
from ocrstream.settings import Settings
from schemas import CachedResult, DocumentResult, DocumentRef, ObjectRef, decode

log = logging.getLogger(__name__)

TOPIC = "result-cache"  # logical name; full name is s.topic(TOPIC)
FETCH_TIMEOUT_S = 5.0  # a hit whose record is not read by then is a miss (the document is OCR'd)
RETRY_S = 10.0  # the index retries a missing topic this often


@dataclass(frozen=True, slots=True)
class Entry:
    """Where the latest record of a cache key is: ``partition``, ``offset``, and its record
    timestamp ``at`` (ms since the epoch)."""

    partition: int
    offset: int
    at: int


def _consumer(s: Settings, purpose: str) -> Consumer:
    # assign() only: the group id is the restore family's (grants: topology/acls.py), never joined
    conf = consumer_config(s, f"{s.group('restore')}-{purpose}-{uuid.uuid4().hex[:8]}",
                           **{"enable.partition.eof": True, "fetch.wait.max.ms": 100})
    conf.pop("group.instance.id", None)
    return Consumer(conf)


class ResultCacheIndex:
    """Thread-safe index of the result-cache topic, filled by its own thread (see module docstring).

    Args:
        s: settings (``OCRSTREAM_RESULT_CACHE_TTL_H``, topic prefix, Kafka).

    :attr:`caught_up` is set once every partition was read to the end it had when reading began.
    """

    def __init__(self, s: Settings):
        self.s = s
        self.topic = s.topic(TOPIC)
        self.ttl_ms = int(s.result_cache_ttl_h * 3600 * 1000)
        self._index: dict[bytes, Entry] = {}
        self._lock = threading.Lock()
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="result-cache-index", daemon=True)
        self._fetcher: Consumer | None = None  # the loop thread's, created at the first hit

    def start(self) -> "ResultCacheIndex":
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and close the consumers."""
        self._stop.set()
        self._thread.join(10)
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    # --- the loop thread ------------------------------------------------------------------
    def lookup(self, key: str, *, tenant: str | None, pages: list[int], dpi: int | None) -> CachedResult | None:
        """The live entry of ``key`` for a document of ``tenant`` with pages ``pages`` (page numbers,
        ascending) at ``dpi``, or None (a miss: see the module docstring)."""
        with self._lock:
            entry = self._index.get(bytes.fromhex(key))
        now = int(time.time() * 1000)
        if entry is None or entry.at < now - self.ttl_ms:
            return None
        try:
            value = self._read(entry)
        except KafkaException as exc:
            log.warning("result cache: entry %s… not read (%s): OCR instead", key[:12], exc)
            return None
        if value is None:
            return None
        try:
            cached = decode(value, CachedResult)
        except OcrstreamError as exc:
            log.warning("result cache: entry %s… is not a cached result (%s): OCR instead", key[:12], exc)
            return None
        result = cached.result
        why = next((reason for reason, bad in (
            ("key", cached.cache_key != key), ("tenant", cached.tenant != tenant),
            ("expired", cached.written_at < now - self.ttl_ms), ("status", result.status != "succeeded"),
            ("pages", [p.page_number for p in result.pages] != pages or result.page_count != len(pages)),
            ("dpi", any(p.dpi != dpi for p in result.pages)),
        ) if bad), None)
        if why is not None:
            if why != "expired":  # the others mean a writer other than the assembler, or a bug
                log.warning("result cache: entry %s… does not match the request (%s): OCR instead", key[:12], why)
            return None
        return cached

    def _read(self, entry: Entry) -> bytes | None:
        """The value at ``entry`` (None: that record is gone: compacted away, tombstoned, retention).

        Raises:
            KafkaException: not read within :data:`FETCH_TIMEOUT_S`.
        """
        if self._fetcher is None:
            self._fetcher = _consumer(self.s, "result-cache-fetch")
        consumer = self._fetcher
        consumer.assign([TopicPartition(self.topic, entry.partition, entry.offset)])
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.1)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        return None
                    continue
                return msg.value() if msg.offset() == entry.offset else None  # a later one: ours is gone
        finally:
            consumer.unassign()
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{self.topic}[{entry.partition}]@{entry.offset} "
                                                               f"not read in {FETCH_TIMEOUT_S}s"))

    # --- the index thread --------------------------------------------------------------------
    def _run(self) -> None:
        consumer = _consumer(self.s, "result-cache")
        try:
            pending = self._assign(consumer)
            while pending is None and not self._stop.wait(RETRY_S):
                pending = self._assign(consumer)
            if not pending:
                self.caught_up.set()
            while not self._stop.is_set():
                try:
                    msgs = consumer.consume(500, 0.5)
                except KafkaException as exc:  # e.g. every broker away: librdkafka reconnects
                    log.warning("result cache index: %s", exc)
                    self._stop.wait(1.0)
                    continue
                for msg in msgs:
                    if msg.error():
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            pending.discard(msg.partition())
                        else:
                            log.warning("result cache index: %s", msg.error())
                        continue
                    self._apply(msg)
                if pending is not None and not pending and not self.caught_up.is_set():
                    log.info("result cache index caught up: %d entries", len(self))
                    self.caught_up.set()
        except Exception:  # noqa: BLE001 - the cache is an optimisation: without it every lookup misses
            log.exception("result cache index stopped: every document is a cache miss until the splitter restarts")
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> set[int] | None:
        """Assign every partition from the beginning; the partitions to read to their end, or None
        when the topic is missing (``ocrstream topics apply`` not run since the cache came)."""
        try:
            parts = topic_partitions(consumer, self.topic, timeout_s=RETRY_S)
        except KafkaException as exc:
            log.warning("result cache: topic %s unavailable (%s): every document is a miss until it exists "
                        "(`ocrstream topics apply`)", self.topic, exc)
            return None
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
        return set(parts)

    def _apply(self, msg) -> None:
        try:
            key = bytes.fromhex((msg.key() or b"").decode("ascii"))
        except ValueError:
            key = b""
        if len(key) != 32:
            log.warning("result cache index: %s[%d]@%d has no cache key; skipped", msg.topic(), msg.partition(),
                        msg.offset())
            return
        with self._lock:
            if msg.value() is None:
                self._index.pop(key, None)
            else:
                self._index[key] = Entry(msg.partition(), msg.offset(), msg.timestamp()[1])
            m.RESULT_CACHE_ENTRIES.set(len(self._index))


def hit_result(cached: CachedResult, ref: DocumentRef, source: ObjectRef, started: float) -> DocumentResult:
    """The result of document ``ref`` served from ``cached``: its pages (page timings dropped: no
    OCR ran for this document), engine and page range; this request's id, ``source`` and
    ``submitted_at``; ``cache_hit``, ``cached_from`` and ``cache_key`` set. ``timings_ms``:
    ``cache_ms`` (lookup and read, from ``started``, ``time.monotonic()``) and ``end_to_end_ms``."""
    r = cached.result
    completed_at = int(time.time() * 1000)
    return DocumentResult(
        document_id=ref.document_id, source=source, status="succeeded", error=None, page_count=r.page_count,
        page_range=r.page_range, pages=[p.model_copy(update={"timings_ms": {}}) for p in r.pages], engine=r.engine,
        timings_ms={"cache_ms": round((time.monotonic() - started) * 1000, 1),
                    "end_to_end_ms": float(completed_at - ref.submitted_at)},
        submitted_at=ref.submitted_at, completed_at=completed_at, cache_hit=True,
        cached_from=r.cached_from or r.document_id, cache_key=cached.cache_key,
    )
