"""The splitter's side of the content-hash result cache: an index of the ``result-cache`` topic,
the OCR workers' fingerprints, and the cache hit (the key scheme: :mod:`ocrstream.result_cache`).

The assembler writes every succeeded document whose pages all carry one cache key to the
compacted topic ``result-cache`` (key: the cache key, value: :class:`~schemas.CachedResult`,
the whole result; ``compact,delete`` with retention = ``OCRSTREAM_RESULT_CACHE_TTL_H``). Each
splitter process runs :class:`ResultCacheIndex`: one background consumer, assigned every
partition of ``result-cache`` from the beginning (no group, no commits, ``read_committed`` so
an aborted transaction's entry never counts), maps each key to the partition, offset and
timestamp of its latest record; a tombstone (``ocrstream delete``) removes it. Values stay in
the topic: a hit reads its one record by offset, so memory is the index only (about 250 bytes
a key).

Which configuration's results to serve: the cache key contains the workers' output
fingerprint, and the splitter does not guess it from its own settings (the GPU image, or an
``OCRSTREAM_ENGINE_DEVICE`` given to the workers only, would make such a guess wrong). Every
OCR worker reports its fingerprint in its metrics samples (``WorkerMetrics.output_fingerprint``,
every ``OCRSTREAM_METRICS_INTERVAL_S``); the same consumer reads the ``metrics`` topic
(:class:`WorkerFingerprints`). A lookup uses the fingerprint only when every live worker of the
profile reports the same one (live: a sample within :data:`LIVE_INTERVALS` of its own
interval); with no live worker, or a fleet half way through a change of models or settings, the
document is OCR'd. So a hit has the pages the workers would write now.

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

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from ocrstream import metrics as m
from ocrstream import result_cache as rc
from ocrstream.errors import OcrstreamError
from ocrstream.kafka import consumer_config, read_at, topic_partitions
from ocrstream.settings import Settings
from schemas import CachedResult, DocumentRef, DocumentResult, ObjectRef, WorkerMetrics, decode

log = logging.getLogger(__name__)

TOPIC = "result-cache"  # logical name; full name is s.topic(TOPIC)
FETCH_TIMEOUT_S = 5.0  # a hit whose record is not read by then is a miss (the document is OCR'd)
RETRY_S = 10.0  # the index retries a missing topic this often
LIVE_INTERVALS = 3.0  # a worker is live while its last sample is at most this many of its intervals old
SAMPLES_LOOKBACK_MS = 10 * 60 * 1000  # metrics samples read back at start (older ones are not live)


class WorkerFingerprints:
    """The output fingerprint each OCR worker reported last (thread-safe).

    :meth:`current` is the fingerprint to look documents of a profile up with: the one every
    live worker of that profile reports, else None. Liveness compares a sample's ``at`` (the
    worker's clock) with this host's clock: hosts need synchronised clocks (NTP), a skew of
    more than a few metrics intervals makes workers look gone (every document a miss).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, tuple[str, str | None, int, float]] = {}  # worker -> (profile, fp, at ms, interval s)

    def add(self, sample: WorkerMetrics) -> None:
        """Record ``sample`` (an older sample of a worker than the one kept is ignored). Its profile
        is ``sample.profile`` where the sample has one, else the default profile."""
        profile = getattr(sample, "profile", None) or rc.DEFAULT_PROFILE
        with self._lock:
            kept = self._last.get(sample.worker_id)
            if kept is None or kept[2] <= sample.at:
                self._last[sample.worker_id] = (profile, sample.output_fingerprint, sample.at, sample.interval_s)

    def current(self, profile: str = rc.DEFAULT_PROFILE, now_ms: int | None = None) -> str | None:
        """The fingerprint all live workers of ``profile`` report, or None: none is live, they
        disagree, or one reports none (a worker that predates the cache)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            live = {fp for prof, fp, at, interval_s in self._last.values()
                    if prof == profile and now_ms - at <= LIVE_INTERVALS * max(interval_s, 1.0) * 1000}
        return next(iter(live)) if len(live) == 1 and None not in live else None


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

    :attr:`caught_up` is set once every partition was read to the end it had when reading began;
    :attr:`workers` holds the workers' fingerprints.
    """

    def __init__(self, s: Settings):
        self.s = s
        self.topic = s.topic(TOPIC)
        self.metrics_topic = s.topic("metrics")
        self.workers = WorkerFingerprints()
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

    def get(self, key: str) -> Entry | None:
        """Where the latest record of ``key`` (64 hex characters) is, as far as the index has read."""
        with self._lock:
            return self._index.get(bytes.fromhex(key))

    # --- the loop thread ------------------------------------------------------------------
    def lookup(self, key: str, *, tenant: str | None, pages: list[int], dpi: int | None) -> CachedResult | None:
        """The live entry of ``key`` for a document of ``tenant`` with pages ``pages`` (page numbers,
        ascending) at ``dpi``, or None (a miss: see the module docstring)."""
        entry = self.get(key)
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
        return read_at(self._fetcher, self.topic, entry.partition, entry.offset, FETCH_TIMEOUT_S)

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
                        if msg.error().code() != KafkaError._PARTITION_EOF:
                            log.warning("result cache index: %s", msg.error())
                        elif msg.topic() == self.topic:
                            pending.discard(msg.partition())
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
        """Assign every partition of the cache from the beginning and the metrics topic from
        :data:`SAMPLES_LOOKBACK_MS` ago; the cache partitions to read to their end, or None when a
        topic is missing (``ocrstream topics apply`` not run since the cache came)."""
        try:
            parts = topic_partitions(consumer, self.topic, timeout_s=RETRY_S)
            since = int(time.time() * 1000) - SAMPLES_LOOKBACK_MS
            samples = consumer.offsets_for_times(
                [TopicPartition(self.metrics_topic, p, since)
                 for p in topic_partitions(consumer, self.metrics_topic, timeout_s=RETRY_S)], timeout=RETRY_S)
        except KafkaException as exc:
            log.warning("result cache: %s or %s unavailable (%s): every document is a miss until they exist "
                        "(`ocrstream topics apply`)", self.topic, self.metrics_topic, exc)
            return None
        # offsets_for_times answers -1 (the end) where no sample is that recent
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts]
                        + [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                           for tp in samples])
        return set(parts)

    def _apply(self, msg) -> None:
        if msg.topic() == self.metrics_topic:
            if msg.value() is not None:
                try:
                    sample = decode(msg.value(), WorkerMetrics)
                except OcrstreamError:
                    return  # not ours to judge: `ocrstream top` reads the same records
                if sample.stage == "worker":
                    self.workers.add(sample)
            return
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
    ``submitted_at`` and ``webhook_url``; ``cache_hit``, ``cached_from`` and ``cache_key`` set. ``timings_ms``:
    ``cache_ms`` (lookup and read, from ``started``, ``time.monotonic()``) and ``end_to_end_ms``."""
    r = cached.result
    completed_at = int(time.time() * 1000)
    return DocumentResult(
        document_id=ref.document_id, source=source, status="succeeded", error=None, page_count=r.page_count,
        page_range=r.page_range, pages=[p.model_copy(update={"timings_ms": {}}) for p in r.pages], engine=r.engine,
        timings_ms={"cache_ms": round((time.monotonic() - started) * 1000, 1),
                    "end_to_end_ms": float(completed_at - ref.submitted_at)},
        submitted_at=ref.submitted_at, completed_at=completed_at, cache_hit=True,
        cached_from=r.cached_from or r.document_id, cache_key=cached.cache_key, profile=r.profile,
        webhook_url=ref.webhook_url,  # this request's callback, never the cached document's
    )
