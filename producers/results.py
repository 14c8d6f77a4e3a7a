"""Following the document-results topic: wait for the results of given documents,
or read the compacted topic to its end (last value per key)."""

from __future__ import annotations

import time
import uuid
from typing import Callable, Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from ocrstream.errors import OcrstreamError
from ocrstream.kafka import consumer_config
from ocrstream.settings import Settings
from schemas import DocumentResult, decode


def watermarks(consumer: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> tuple[int, int]:
    """(low, high) watermark offsets, retrying while leadership moves (e.g. just after a
    broker restart, when the broker answers NOT_LEADER_FOR_PARTITION for a few seconds).

    Raises:
        KafkaException: still failing after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _assign_all(consumer: Consumer, topic: str, start: str) -> list[TopicPartition]:
    md = consumer.list_topics(topic, timeout=10)
    parts = [TopicPartition(topic, p) for p in md.topics[topic].partitions]
    offsets = []
    for tp in parts:
        low, high = watermarks(consumer, tp)
        offsets.append(TopicPartition(topic, tp.partition, OFFSET_BEGINNING if start == "beginning" else high))
    consumer.assign(offsets)
    return parts


class ResultFollower:
    """Reads document results from the position the topic had at construction.

    Create it *before* publishing, so no result can slip past. Uses manual
    assignment (no consumer group), read_committed isolation.
    """

    def __init__(self, s: Settings, start: str = "end"):
        self.s = s
        conf = consumer_config(s, f"{s.group('follower')}-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
        self.consumer = Consumer(conf)
        self.topic = s.topic("document-results")
        self.parts = _assign_all(self.consumer, self.topic, start)

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
        pending = {tp.partition for tp in self.parts}
        for tp in self.parts:
            low, high = watermarks(self.consumer, tp)
            if high <= low:
                pending.discard(tp.partition)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                continue
            key = (msg.key() or b"").decode()
            if msg.value() is None:
                latest.pop(key, None)
            else:
                latest[key] = decode(msg.value(), DocumentResult)
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
