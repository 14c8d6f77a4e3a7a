"""Drop-folder watcher: objects under ``bucket/inbox_prefix`` become ingest messages,
exactly once per object version, across restarts.

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
import uuid
from pathlib import PurePosixPath

import orjson
from confluent_kafka import Consumer, Producer

from consumers.common import StopFlag, now_ms
from ocrstream.errors import OcrstreamError
from ocrstream.kafka import assign_all, consumer_config, producer_config, read_to_end
from ocrstream.settings import Settings
from ocrstream.storage import ObjectInfo, ObjectStore, validate_key
from schemas import DocumentRef, ObjectRef, encode

from .publish import stable_document_id

log = logging.getLogger(__name__)


class DropFolderWatcher:
    """Lists the drop folder every ``watch_interval_s`` and publishes new object versions."""

    def __init__(self, s: Settings, stop: StopFlag | None = None):
        self.s = s
        self.stop = stop or StopFlag()
        self.store = ObjectStore(s)
        self.state_topic = s.topic("watch-state")
        tid = f"{s.group('watch')}-{s.bucket}-{s.inbox_prefix}".replace("/", "_")
        self.producer = Producer(producer_config(s, transactional_id=tid))
        self.producer.init_transactions(30)  # fences an older watcher and aborts its open transaction
        self.seen = self._load_checkpoint()

    def _load_checkpoint(self) -> dict[str, tuple[str, str | None]]:
        """Read the compacted checkpoint topic to its end: key -> (etag, version_id)."""
        conf = consumer_config(self.s, f"{self.s.group('watch-loader')}-{uuid.uuid4().hex[:8]}",
                               **{"enable.partition.eof": True})
        consumer = Consumer(conf)
        seen: dict[str, tuple[str, str | None]] = {}
        try:
            for msg in read_to_end(consumer, assign_all(consumer, self.state_topic, "beginning")):
                state = orjson.loads(msg.value())
                seen[msg.key().decode()] = (state["etag"], state.get("version_id"))
        finally:
            consumer.close()
        log.info("drop-folder checkpoint: %d object versions already published", len(seen))
        return seen

    def scan_once(self) -> list[str]:
        """Publish every new object version under the prefix; returns their document ids."""
        published = []
        for info in self.store.list(self.s.inbox_prefix):
            ckey = f"{info.bucket}/{info.key}"
            if self.seen.get(ckey) == (info.etag, info.version_id):
                continue
            if info.key.endswith("/"):
                continue
            try:
                validate_key(info.key)
            except OcrstreamError as exc:
                log.warning("skipping %r: %s", info.key, exc)
                self.seen[ckey] = (info.etag, info.version_id)
                continue
            published.append(self._publish(info, ckey))
        return published

    def _publish(self, info: ObjectInfo, ckey: str) -> str:
        doc_id = stable_document_id(info.bucket, info.key, info.etag, info.version_id)
        ref = DocumentRef(
            document_id=doc_id,
            source=ObjectRef(bucket=info.bucket, key=info.key, filename=PurePosixPath(info.key).name,
                             etag=info.etag, version_id=info.version_id, size=info.size),
            submitted_at=now_ms(),
        )
        state = orjson.dumps({"etag": info.etag, "version_id": info.version_id, "document_id": doc_id,
                              "published_at": now_ms()})
        self.producer.begin_transaction()
        self.producer.produce(self.s.topic("ingest"), encode(ref), doc_id)
        self.producer.produce(self.state_topic, state, ckey)
        self.producer.commit_transaction(30)
        self.seen[ckey] = (info.etag, info.version_id)
        log.info("published %s as %s", info.key, doc_id)
        return doc_id

    def run(self) -> None:
        """Scan until stopped; storage hiccups are logged and retried on the next scan."""
        while not self.stop.is_set():
            try:
                self.scan_once()
            except OcrstreamError as exc:
                log.warning("drop-folder scan failed (%s); retrying", exc)
            self.stop.event.wait(self.s.watch_interval_s)


def run_watcher(s: Settings, stop: StopFlag | None = None) -> None:
    """Run the drop-folder watcher until SIGTERM/SIGINT (or ``stop``)."""
    DropFolderWatcher(s, stop).run()
