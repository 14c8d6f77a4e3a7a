"""Drop-folder watcher: objects under ``bucket/inbox_prefix`` become ingest messages,
exactly once per object version, across restarts.

Two ways to learn of new objects (``OCRSTREAM_WATCH_MODE``):

- ``poll`` (default; any S3 server): list the prefix every ``watch_interval_s``.
- ``events``: consume S3 bucket notifications (MinIO's Kafka target, see
  :mod:`producers.object_events`) from the ``object-events`` topic. Listing stays as the
  fallback, at start and every ``watch_rescan_s``, because a notifier drops events while
  Kafka is unreachable and its queue is off or full. An event is only a hint: the object is
  looked up (HEAD) before it is published, so an event for a deleted object publishes
  nothing. The event offsets are committed inside the same transaction as the ingest and
  checkpoint records (``send_offsets_to_transaction``), so a crash between the two can
  neither lose nor repeat an event's effect.

The checkpoint is a compacted topic (``watch-state``: object key -> ETag and
version last published). Each new object version's DocumentRef and its
checkpoint record are written in one Kafka transaction, so after a crash either
both exist or neither does; a restarted watcher reads the checkpoint to its end
and publishes only what is missing. The ``transactional.id`` is stable per
bucket/prefix, so a second watcher on the same folder fences the first
(zombie fencing, KIP-98) instead of double-publishing.

The document id is derived from bucket, key, ETag and version
(:func:`producers.publish.stable_document_id`), so a re-published version
overwrites its own result in the compacted results topic.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath

import time

import orjson
from confluent_kafka import Message, TopicPartition

from ocrstream import metrics as m
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import make_admin, topic_partitions
from ocrstream.streaming import (Delivery, Output, StageRuntime, StopFlag, TransactionAborted, now_ms,
                                 run_stage)
from ocrstream.streaming.changelog import read_partitions
from ocrstream.streaming.health import serve_if_configured
from ocrstream.settings import Settings
from ocrstream.sources import check_source
from ocrstream.storage import ObjectInfo, ObjectStore
from schemas import DocumentRef, ObjectRef, encode

from .object_events import parse_object_events
from .publish import stable_document_id

log = logging.getLogger(__name__)

STAGE = "watch"
EVENT_BATCH = 100  # events per transaction: amortises the commit, bounds the work redone after an abort
# Seconds without any record or end-of-partition report after which reading the checkpoint gives up.
CHECKPOINT_READ_IDLE_TIMEOUT_S = 60.0


class PublishedVersions:
    """The object versions the watcher has published, per object (``bucket/key``).

    Unversioned objects (version id None) keep only their last ETag: an overwrite replaces
    the content, and content that comes back later is a new document. Versioned objects keep
    every version, because each version is its own document and their events (or a listing)
    may arrive in any order.
    """

    def __init__(self) -> None:
        self.by_object: dict[str, dict[str | None, str]] = {}  # bucket/key -> {version_id: etag}

    @staticmethod
    def checkpoint_key(ckey: str, version_id: str | None) -> str:
        """Record key in the compacted checkpoint topic: one record per version when versioned."""
        return ckey if version_id is None else f"{ckey}?versionId={version_id}"

    def add(self, ckey: str, etag: str, version_id: str | None) -> None:
        if version_id is None:
            self.by_object[ckey] = {None: etag}
        else:
            self.by_object.setdefault(ckey, {})[version_id] = etag

    def merge(self, other: "PublishedVersions") -> None:
        for ckey, versions in other.by_object.items():
            for version_id, etag in versions.items():
                self.add(ckey, etag, version_id)

    def covers(self, ckey: str, etag: str | None, version_id: str | None) -> bool:
        """True when this version was published: by version id when there is one, else by
        ETag (a listing carries no version ids, so any published version with the same
        content counts; a re-upload of identical bytes would OCR identically)."""
        versions = self.by_object.get(ckey, {})
        if version_id is not None:
            return version_id in versions
        return etag is not None and etag in versions.values()

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_object.values())


class DropFolderWatcher:
    """Publishes each new object version under the drop folder once (see the module docstring).

    Args:
        s: settings (``watch_mode``, ``watch_interval_s``, ``watch_rescan_s``, ``inbox_prefix``).
        stop: set to end :meth:`run`.

    Raises:
        KafkaException: the transactional producer could not be initialised (broker down
            for 30 s, or not authorised).
    """

    def __init__(self, s: Settings, stop: StopFlag | None = None):
        self.s = s
        self.store = ObjectStore(s)
        self.state_topic = s.topic("watch-state")
        try:
            check_source(s, s.bucket, f"{s.inbox_prefix}probe")
        except OcrstreamError as exc:  # every dropped file would be skipped: say so once, loudly
            log.error("the drop folder s3://%s/%s is not an allowed source (%s): its files are skipped",
                      s.bucket, s.inbox_prefix, exc.message)
        # Stable per bucket/prefix: a second watcher on the same folder fences the first.
        tid = f"{s.group('watch')}-{s.bucket}-{s.inbox_prefix}".replace("/", "_")
        self.rt: StageRuntime | None = None
        self.http = None
        if s.watch_mode == "events":
            # The stage runtime: consumer of the notifications, always transactional (the event
            # offsets commit with the ingest and checkpoint records), probes, failure policy.
            self.rt = StageRuntime(s, STAGE, [s.topic("object-events")], stop=stop, transactional=True, tid=tid,
                                   results_topic=None)
            self.stop, self.delivery = self.rt.stop, self.rt.delivery
        else:
            self.stop = stop or StopFlag()
            self.delivery = Delivery(s, None, STAGE, transactional=True, tid=tid)
            self.http = serve_if_configured(s.http_port, lambda: True)
        # Fenced above (init_transactions) before reading: a zombie cannot write past what we read.
        self.seen = self._load_checkpoint()

    def _load_checkpoint(self) -> PublishedVersions:
        """Read the compacted checkpoint topic to its end.

        The last record per checkpoint key wins; a tombstone (null value) removes its
        key (that object version counts as not published); a record that is not a
        checkpoint (not JSON, no ``etag``) is logged and skipped.

        Raises:
            TimeoutError: the end of some partition (its high watermark, or the last
                stable offset under read_committed) was not reached because no record
                arrived for ``CHECKPOINT_READ_IDLE_TIMEOUT_S`` seconds. A partial checkpoint
                would make the watcher publish again what it already published, so the
                stage stops instead and its restart reads the checkpoint again.
            KafkaException: the topic does not exist, or a consumer error.
        """
        # checkpoint key -> (ckey, etag, version_id), in the order of each key's last write.
        latest: dict[str, tuple[str, str, str | None]] = {}
        partitions = topic_partitions(make_admin(self.s), self.state_topic)
        try:
            for msg in read_partitions(self.s, self.state_topic, partitions, CHECKPOINT_READ_IDLE_TIMEOUT_S):
                self._apply_checkpoint_record(msg, latest)
        except OcrstreamError as exc:
            raise TimeoutError(f"drop-folder checkpoint {self.state_topic} not read to its end ({exc}); "
                               "refusing to start with a partial checkpoint") from exc
        seen = PublishedVersions()
        for ckey, etag, version_id in latest.values():
            seen.add(ckey, etag, version_id)
        log.info("drop-folder checkpoint: %d object versions already published", len(seen))
        return seen

    @staticmethod
    def _apply_checkpoint_record(msg: Message, latest: dict[str, tuple[str, str, str | None]]) -> None:
        """Fold one checkpoint record into ``latest`` (see :meth:`_load_checkpoint`)."""
        if msg.key() is None:
            log.warning("checkpoint record without a key at offset %d: skipped", msg.offset())
            return
        key = msg.key().decode(errors="replace")
        latest.pop(key, None)  # re-inserted below: dict order follows each key's last write
        if msg.value() is None:
            return  # tombstone: the object (version) is no longer checkpointed
        try:
            state = orjson.loads(msg.value())
            etag = state["etag"]
            version_id = state.get("version_id")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            log.warning("checkpoint record %r at offset %d is not a checkpoint (%s): skipped", key, msg.offset(), exc)
            return
        ckey = key.removesuffix(f"?versionId={version_id}") if version_id else key
        latest[key] = (ckey, etag, version_id)

    def _wanted(self, key: str) -> bool:
        return key.startswith(self.s.inbox_prefix) and not key.endswith("/")

    def _outputs(self, info: ObjectInfo, ckey: str) -> tuple[str, list[Output]]:
        """``(document id, [DocumentRef record, checkpoint record])``: published in one transaction."""
        doc_id = stable_document_id(info.bucket, info.key, info.etag, info.version_id)
        ref = DocumentRef(
            document_id=doc_id,
            source=ObjectRef(bucket=info.bucket, key=info.key, filename=PurePosixPath(info.key).name,
                             etag=info.etag, version_id=info.version_id, size=info.size),
            submitted_at=now_ms(),
        )
        state = orjson.dumps({"etag": info.etag, "version_id": info.version_id, "document_id": doc_id,
                              "published_at": now_ms()})
        log.info("publishing %s as %s", info.key, doc_id)
        return doc_id, [Output(self.s.topic("ingest"), doc_id, encode(ref)),
                        Output(self.state_topic, PublishedVersions.checkpoint_key(ckey, info.version_id), state)]

    def _valid(self, info: ObjectInfo, ckey: str, pending: PublishedVersions) -> bool:
        """False for keys the pipeline refuses (invalid, or outside OCRSTREAM_ALLOWED_SOURCES);
        they are remembered so they are not retried."""
        try:
            check_source(self.s, info.bucket, info.key)
            return True
        except OcrstreamError as exc:
            log.warning("skipping %r: %s", info.key, exc)
            pending.add(ckey, info.etag, info.version_id)
            return False

    def scan_once(self) -> list[str]:
        """List the drop folder and publish every new object version, one transaction each.

        Returns:
            The document ids published.

        Raises:
            OcrstreamError: ``storage_error`` when the listing fails (transient).
            KafkaException: a transaction failed (aborted; the object is tried again next time).
        """
        published = []
        for info in self.store.list(self.s.inbox_prefix):
            ckey = f"{info.bucket}/{info.key}"
            if self.seen.covers(ckey, info.etag, info.version_id) or not self._wanted(info.key):
                continue
            if info.version_id is None:
                # Listings (ListObjectsV2) carry no version ids; the document id and checkpoint
                # need the version an event would name, so look it up (one HEAD per new version).
                try:
                    info = self.store.stat(info.bucket, info.key)
                except OcrstreamError as exc:
                    if exc.code == ReasonCode.OBJECT_NOT_FOUND:
                        continue  # deleted since the listing
                    raise
                if self.seen.covers(ckey, info.etag, info.version_id):
                    continue
            if not self._valid(info, ckey, self.seen):
                continue
            doc_id, outputs = self._outputs(info, ckey)
            try:
                self.delivery.publish(outputs, [])
            except TransactionAborted as exc:
                log.warning("publishing %s aborted (%s): tried again at the next listing", info.key, exc)
                continue
            self.seen.add(ckey, info.etag, info.version_id)
            published.append(doc_id)
            m.WATCH_PUBLISHED.labels("scan").inc()
            m.MESSAGES_PRODUCED.labels(STAGE, self.s.topic("ingest")).inc()
        if published and self.rt is not None:
            log.warning("the fallback listing found %d object versions no event had announced yet "
                        "(events lost by the notifier, or still queued)", len(published))
        return published

    def consume_events_once(self, timeout_s: float = 1.0) -> list[str]:
        """Handle up to ``EVENT_BATCH`` notification records in one transaction.

        Created objects under the prefix are published; other events (removals, other
        buckets or prefixes, versions already published) only advance the offsets; a record
        that is not an S3 event becomes a dead letter (``invalid_json``, ``schema_violation``).

        Returns:
            The document ids published.

        Raises:
            OcrstreamError: ``storage_error`` when an object lookup fails (transient); the
                transaction is aborted and the records will be read again.
            KafkaException: the transaction failed (aborted; records will be read again).
        """
        assert self.rt is not None, "events mode only"
        rt = self.rt
        msgs = rt.consume(EVENT_BATCH, timeout_s)
        if not msgs:
            return []
        pending = PublishedVersions()
        published: list[str] = []
        outputs: list[Output] = []

        def handle(msg: Message, ctx) -> list[Output]:
            doc_outputs = self._handle_event(msg, pending)
            published.extend(doc_id for doc_id, _ in doc_outputs)
            return [o for _, outs in doc_outputs for o in outs]

        try:
            for msg in msgs:
                # Not an S3 event, or a bug: a dead letter. A transient storage failure (an
                # object lookup) escapes: the whole batch is read again after a rewind.
                outputs += rt.guard(msg, handle, reraise_transient=True)
        except OcrstreamError as exc:
            log.warning("object events not handled (%s): reading them again in %.0fs", exc, self.s.watch_interval_s)
            rt.rewind()
            self.stop.event.wait(self.s.watch_interval_s)  # the store is away: do not spin
            return []
        offsets = [tp for tp in rt.consumer.position([TopicPartition(t, p) for t, p in rt.assigned])
                   if tp.offset >= 0]
        if not rt.publish(outputs, offsets):
            return []  # aborted and rewound: the events are read again
        self.seen.merge(pending)
        m.WATCH_PUBLISHED.labels("event").inc(len(published))
        return published

    def _handle_event(self, msg: Message, pending: PublishedVersions) -> list[tuple[str, list[Output]]]:
        """``[(document id, outputs)]`` for the created objects one notification record announces.

        Raises:
            OcrstreamError: ``invalid_json`` / ``schema_violation`` (not an S3 event: dead letter),
                or a transient ``storage_error`` from the object lookup.
        """
        events = parse_object_events(msg.value())
        published = []
        for ev in events:
            if not ev.created or ev.bucket != self.s.bucket or not self._wanted(ev.key):
                continue
            ckey = f"{ev.bucket}/{ev.key}"
            if self._covered(ckey, ev.etag, ev.version_id, pending):
                continue  # redelivered event, or the listing got there first
            try:
                info = self.store.stat(ev.bucket, ev.key, ev.version_id)
            except OcrstreamError as exc:
                if exc.code == ReasonCode.OBJECT_NOT_FOUND:
                    log.info("event for %s, which is gone: nothing to publish", ckey)
                    continue
                raise
            if self._covered(ckey, info.etag, info.version_id, pending):
                continue
            if not self._valid(info, ckey, pending):
                continue
            published.append(self._outputs(info, ckey))
            pending.add(ckey, info.etag, info.version_id)
        return published

    def _covered(self, ckey: str, etag: str | None, version_id: str | None, pending: PublishedVersions) -> bool:
        return self.seen.covers(ckey, etag, version_id) or pending.covers(ckey, etag, version_id)

    def ready(self) -> bool:
        """For ``/readyz``: checkpoint loaded, and in events mode, event partitions assigned."""
        return self.rt is None or self.rt.ready()

    def run(self) -> None:
        """Watch until stopped. Listing failures are logged and retried every interval; nothing
        is skipped.

        Raises:
            FatalKafkaError: fenced by a newer watcher on the same folder, or unrecoverable.
        """
        events = self.rt is not None
        interval = (self.s.watch_rescan_s or float("inf")) if events else self.s.watch_interval_s
        next_scan = 0.0
        if events:
            self.rt.start()
        try:
            while not self.stop.is_set():
                if time.monotonic() >= next_scan:
                    try:
                        self.scan_once()
                    except OcrstreamError as exc:
                        log.warning("drop-folder listing failed (%s); retrying", exc)
                    next_scan = time.monotonic() + interval
                if not events:
                    self.stop.event.wait(max(0.0, next_scan - time.monotonic()))
                    continue
                self.consume_events_once(timeout_s=1.0)
        finally:
            if self.rt is not None:
                self.rt.close()
            else:
                self.delivery.close()
                if self.http:
                    self.http.close()


def run_watcher(s: Settings, stop: StopFlag | None = None) -> int:
    """Run the drop-folder watcher until SIGTERM/SIGINT (or ``stop``); returns the exit status."""
    return run_stage(lambda: DropFolderWatcher(s, stop))
