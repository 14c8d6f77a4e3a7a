"""Following the document-results topic: wait for the results of given documents,
or read the compacted topic to its end (last value per key)."""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from typing import Callable, Iterable

from confluent_kafka import Consumer, TopicPartition

from ocrstream.errors import OcrstreamError
from ocrstream.kafka import assign_all, consumer_config, read_to_end, topic_partitions, watermarks
from ocrstream.settings import Settings
from schemas import DocumentResult, decode
from topology import follower_group

log = logging.getLogger(__name__)


class ResultFollower:
    """Reads document results from the position the topic had at construction.

    Create it *before* publishing, so no result can slip past. Uses manual
    assignment (no consumer group), read_committed isolation.
    """

    def __init__(self, s: Settings, start: str = "end"):
        self.s = s
        conf = consumer_config(s, f"{s.group(follower_group(s.tenant))}-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
        self.consumer = Consumer(conf)
        self.topic = s.tenant_topic(s.tenant, "document-results")  # OCRSTREAM_TENANT: its own results
        self.parts = assign_all(self.consumer, self.topic, start)

    def wait_for(self, document_ids: Iterable[str], timeout_s: float | None = None,
                 on_result: Callable[[DocumentResult], None] | None = None) -> dict[str, DocumentResult]:
        """Results of ``document_ids`` (the first one seen per id).

        Raises:
            TimeoutError: not all arrived within ``timeout_s`` (the partial dict is on ``.results``).
        """
        wanted = set(document_ids)
        results: dict[str, DocumentResult] = {}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while wanted - results.keys():
            if deadline is not None and time.monotonic() > deadline:
                err = TimeoutError(f"{len(wanted - results.keys())} of {len(wanted)} results missing after {timeout_s}s")
                err.results = results  # type: ignore[attr-defined]
                raise err
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            key = (msg.key() or b"").decode()
            if key in wanted and key not in results and msg.value() is not None:
                try:
                    result = decode(msg.value(), DocumentResult)
                except OcrstreamError:
                    continue
                results[key] = result
                if on_result:
                    on_result(result)
        return results

    def read_to_end(self, timeout_s: float = 30.0) -> dict[str, DocumentResult]:
        """Last value per key from the current position to the end of every partition."""
        latest: dict[str, DocumentResult] = {}
        for msg in read_to_end(self.consumer, self.parts, timeout_s):
            key = (msg.key() or b"").decode()
            if msg.value() is None:
                latest.pop(key, None)
                continue
            try:
                latest[key] = decode(msg.value(), DocumentResult)
            except OcrstreamError as exc:  # not a document result: it must not hide the others
                log.warning("skipping %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)
        return latest

    def close(self) -> None:
        self.consumer.close()


def read_latest_results(s: Settings, timeout_s: float = 30.0) -> dict[str, DocumentResult]:
    """The compacted view of document results: last value per document id."""
    follower = ResultFollower(s, start="beginning")
    try:
        return follower.read_to_end(timeout_s)
    finally:
        follower.close()


def key_partition(key: str, partitions: int) -> int:
    """The partition librdkafka's default partitioner (``consistent_random``: CRC32 of the key
    modulo the partition count, for a non-empty key) gives ``key``; the stages produce document
    results with it."""
    return zlib.crc32(key.encode()) % partitions


def find_result(s: Settings, document_id: str, timeout_s: float = 30.0) -> DocumentResult | None:
    """The current result of one document from the compacted document-results topic (of
    ``OCRSTREAM_TENANT``), or None when there is none (not completed yet, unknown, or deleted).

    Reads only the partition that holds the key (:func:`key_partition`), from its beginning to
    its end: compaction keeps that to about one record per document of the partition.

    A record under this key that is not a document result is skipped (logged).

    Raises:
        KafkaException: the topic's metadata cannot be read.
    """
    conf = consumer_config(s, f"{s.group(follower_group(s.tenant))}-{uuid.uuid4().hex[:8]}",
                           **{"enable.partition.eof": True})
    consumer = Consumer(conf)
    try:
        topic = s.tenant_topic(s.tenant, "document-results")
        part = key_partition(document_id, len(topic_partitions(consumer, topic)))
        low, _ = watermarks(consumer, TopicPartition(topic, part))
        tp = TopicPartition(topic, part, low)
        consumer.assign([tp])
        found: DocumentResult | None = None
        for msg in read_to_end(consumer, [tp], timeout_s):
            if (msg.key() or b"").decode(errors="replace") != document_id:
                continue
            if msg.value() is None:
                found = None
                continue
            try:
                found = decode(msg.value(), DocumentResult)
            except OcrstreamError as exc:  # a record that is not a result does not replace the last one
                log.warning("skipping %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)
        return found
    finally:
        consumer.close()
