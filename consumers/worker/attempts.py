"""Poison pages: how many engine attempts of a page task ended the worker process.

Kafka keeps no delivery count per record, and a page whose OCR kills the process
(segfault, out-of-memory kill, kill -9, an engine hung past its budget) would otherwise be
re-read and kill every worker that gets it, forever. So before a batch goes to the engine
the worker writes an *in-flight mark* per page to the compacted ``page-attempts`` topic:
key ``<partition>/<offset>`` for a task of the ``pages`` topic (the format of workers that
read only that topic, so either version reads the other's marks) and ``<topic>/<partition>/<offset>``
for the other page topics (``pages-interactive``, a profile's, :mod:`topology.pages`; the
logical name, without the topic prefix), value ``{"attempts": n, ...}``, on the partition of the
same number as the page task's (every page topic has the partition count of ``pages``, and so
does ``page-attempts``), and waits for the acknowledgement. As soon as the engine returns (the attempt did
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
from topology.pages import page_topic

log = logging.getLogger(__name__)

TOPIC = "page-attempts"
PAGES = page_topic()  # `pages`: the page topic whose marks keep the key format without a topic


Mark = tuple[str, int, int]
"""``(page topic, partition, offset)`` of a page task; the topic's full name."""


class PageAttempts:
    """Attempt counts of the page tasks of the assigned page-topic partitions.

    Args:
        s: settings (``max_page_attempts``, topic prefix, worker id).
    """

    def __init__(self, s: Settings):
        self.s = s
        self.topic = s.topic(TOPIC)
        self.producer = make_producer(s, **{"linger.ms": 0})
        self.counts: dict[Mark, int] = {}  # page task -> attempts that ended a process

    def key(self, topic: str, partition: int, offset: int) -> str:
        """The mark's record key (see module docstring)."""
        logical = topic[len(self.s.topic_prefix):] if topic.startswith(self.s.topic_prefix) else topic
        return f"{partition}/{offset}" if logical == PAGES else f"{logical}/{partition}/{offset}"

    def parse_key(self, key: str) -> Mark:
        """``(full topic name, partition, offset)`` of a mark's key; a key without a topic is of ``pages``.

        Raises:
            ValueError: not a mark's key.
        """
        parts = key.rsplit("/", 2)
        if len(parts) == 2:
            parts = [PAGES, *parts]
        if len(parts) != 3 or not parts[0]:
            raise ValueError(f"not an in-flight mark key: {key!r}")
        return self.s.topic(parts[0]), int(parts[1]), int(parts[2])

    def restore(self, partitions: list[tuple[str, int]]) -> None:
        """Read the marks of the page-topic ``(topic, partition)`` pairs (replacing what is held
        for them; marks of other topics on the same ``page-attempts`` partitions are left as held).

        Raises:
            OcrstreamError: ``storage_error`` when the topic does not answer (see ``read_partitions``).
        """
        self.forget(partitions)
        wanted = set(partitions)
        for msg in read_partitions(self.s, self.topic, sorted({p for _, p in wanted})):
            try:
                mark = self.parse_key((msg.key() or b"").decode())
                if mark[:2] not in wanted:
                    continue
                if msg.value() is None:
                    self.counts.pop(mark, None)
                else:
                    self.counts[mark] = int(orjson.loads(msg.value())["attempts"])
            except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                log.error("unreadable in-flight mark %r in %s", msg.key(), self.topic)
        held = {k: v for k, v in self.counts.items() if k[:2] in wanted}
        if held:
            log.warning("page tasks that ended earlier worker processes: %s", held)

    def forget(self, partitions: list[tuple[str, int]]) -> None:
        gone = set(partitions)
        self.counts = {k: v for k, v in self.counts.items() if k[:2] not in gone}

    def prior(self, topic: str, partition: int, offset: int) -> int:
        """Engine attempts of this page task that ended a worker process."""
        return self.counts.get((topic, partition, offset), 0)

    def mark(self, pages: list[tuple[str, int, int, str, int]], timeout_s: float = 30.0) -> None:
        """Write one more attempt for each ``(topic, partition, offset, document_id, page_number)``
        and wait for the acknowledgement: the engine must not start before the marks are durable.

        Raises:
            RuntimeError: a mark was not acknowledged (the batch must not start).
        """
        tracker = DeliveryTracker()
        for topic, partition, offset, doc, number in pages:
            n = self.prior(topic, partition, offset) + 1
            value = orjson.dumps({"attempts": n, "document_id": doc, "page_number": number,
                                  "worker_id": self.s.worker_id, "at": now_ms()})
            self.producer.produce(self.topic, value, self.key(topic, partition, offset), partition=partition,
                                  on_delivery=tracker.callback)
        remaining = self.producer.flush(timeout_s)
        if remaining or tracker.errors:
            raise RuntimeError(f"in-flight marks not acknowledged: {remaining} pending, {tracker.errors[:2]}")
        for topic, partition, offset, _, _ in pages:
            self.counts[(topic, partition, offset)] = self.prior(topic, partition, offset) + 1

    def clear(self, pages: list[Mark]) -> None:
        """Tombstone the marks of committed page tasks (best effort: a mark left behind only
        makes a replayed page run alone once)."""
        for topic, partition, offset in pages:
            if self.counts.pop((topic, partition, offset), None) is not None:
                self.producer.produce(self.topic, None, self.key(topic, partition, offset), partition=partition)
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(5)
