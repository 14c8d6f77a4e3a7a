"""Poison pages: how many engine attempts of a page task ended the worker process.

Kafka keeps no delivery count per record, and a page whose OCR kills the process
(segfault, out-of-memory kill, kill -9, an engine hung past its budget) would otherwise be
re-read and kill every worker that gets it, forever. So before a batch goes to the engine
the worker writes an *in-flight mark* per page to the compacted ``page-attempts`` topic:
key ``<pages partition>/<offset>``, value ``{"attempts": n, ...}``, on the partition of the
page task, and waits for the acknowledgement. As soon as the engine returns (the attempt did
not end the process) the mark is tombstoned, whatever then happens to the result. A mark that
is still there when the partition is assigned again means that many attempts ended the process.

Why a compacted topic and not the alternatives:

- a counter in the page result or a header cannot be written by a process that is dying;
- the consumer group's committed offset metadata holds one string per partition, not per record;
- a local file is lost with the pod and unknown to the next owner of the partition;
- a compacted topic partitioned like ``pages`` is restored by the next owner of the same
  partition (:func:`ocrstream.streaming.changelog.read_partitions`, inside the assign
  callback), costs one small record and one ``flush`` per batch, and compaction keeps it
  small. Marks are written by a non-transactional producer, so in exactly-once mode they
  survive the aborted transaction of the process they outlive.

A page with earlier attempts runs in a batch of its own (see :mod:`.batching`), so a poison
page costs the pages that shared its first batch one attempt each, and nothing more. A page
whose attempts reached ``OCRSTREAM_MAX_PAGE_ATTEMPTS`` fails with ``worker_crash`` without
running. An engine timeout counts as an attempt: the mark was written before the call.
"""

from __future__ import annotations

import logging

import orjson

from ocrstream.kafka import DeliveryTracker, make_producer
from ocrstream.settings import Settings
from ocrstream.streaming import now_ms
from ocrstream.streaming.changelog import read_partitions

log = logging.getLogger(__name__)

TOPIC = "page-attempts"


class PageAttempts:
    """Attempt counts of the page tasks of the assigned ``pages`` partitions.

    Args:
        s: settings (``max_page_attempts``, topic prefix, worker id).
    """

    def __init__(self, s: Settings):
        self.s = s
        self.topic = s.topic(TOPIC)
        self.producer = make_producer(s, **{"linger.ms": 0})
        self.counts: dict[tuple[int, int], int] = {}  # (pages partition, offset) -> attempts that ended a process

    @staticmethod
    def key(partition: int, offset: int) -> str:
        return f"{partition}/{offset}"

    def restore(self, partitions: list[int]) -> None:
        """Read the marks of ``partitions`` (replacing what is held for them).

        Raises:
            OcrstreamError: ``storage_error`` when the topic does not answer (see ``read_partitions``).
        """
        self.forget(partitions)
        found = 0
        for msg in read_partitions(self.s, self.topic, partitions):
            partition, _, offset = (msg.key() or b"").decode().partition("/")
            try:
                key = (int(partition), int(offset))
                if msg.value() is None:
                    self.counts.pop(key, None)
                else:
                    self.counts[key] = int(orjson.loads(msg.value())["attempts"])
                    found += 1
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                log.error("unreadable in-flight mark %r in %s", msg.key(), self.topic)
        held = {k: v for k, v in self.counts.items() if k[0] in set(partitions)}
        if held:
            log.warning("pages %s ended earlier worker processes: %s", self.topic, held)

    def forget(self, partitions: list[int]) -> None:
        gone = set(partitions)
        self.counts = {k: v for k, v in self.counts.items() if k[0] not in gone}

    def prior(self, partition: int, offset: int) -> int:
        """Engine attempts of this page task that ended a worker process."""
        return self.counts.get((partition, offset), 0)

    def mark(self, pages: list[tuple[int, int, str, int]], timeout_s: float = 30.0) -> None:
        """Write one more attempt for each ``(partition, offset, document_id, page_number)`` and
        wait for the acknowledgement: the engine must not start before the marks are durable.

        Raises:
            RuntimeError: a mark was not acknowledged (the batch must not start).
        """
        tracker = DeliveryTracker()
        for partition, offset, doc, number in pages:
            n = self.prior(partition, offset) + 1
            value = orjson.dumps({"attempts": n, "document_id": doc, "page_number": number,
                                  "worker_id": self.s.worker_id, "at": now_ms()})
            self.producer.produce(self.topic, value, self.key(partition, offset), partition=partition,
                                  on_delivery=tracker.callback)
        remaining = self.producer.flush(timeout_s)
        if remaining or tracker.errors:
            raise RuntimeError(f"in-flight marks not acknowledged: {remaining} pending, {tracker.errors[:2]}")
        for partition, offset, _, _ in pages:
            self.counts[(partition, offset)] = self.prior(partition, offset) + 1

    def clear(self, pages: list[tuple[int, int]]) -> None:
        """Tombstone the marks of committed page tasks (best effort: a mark left behind only
        makes a replayed page run alone once)."""
        for partition, offset in pages:
            if self.counts.pop((partition, offset), None) is not None:
                self.producer.produce(self.topic, None, self.key(partition, offset), partition=partition)
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(5)
