"""Admission limits of the gateway: a per-tenant quota and the OCR workers' page backlog."""

from __future__ import annotations

import math
import threading
import time

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from ocrstream.kafka import topic_partitions
from ocrstream.metrics import GATEWAY_PAGE_BACKLOG


class TenantQuota:
    """Documents per minute per tenant: a token bucket per tenant holding at most a minute's
    worth (``per_minute`` tokens, refilled continuously), so a burst of a minute's quota passes
    and the long-run rate is ``per_minute``. Counted per gateway process.

    Args:
        per_minute: the quota; 0 = unlimited.
        clock: seconds, monotonic (tests may pass their own).
    """

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.per_minute = per_minute
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str | None, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def take(self, tenant: str | None) -> float:
        """Take one document's token for ``tenant``.

        Returns:
            0.0 when taken; otherwise the seconds until one is available (nothing taken).
        """
        if not self.per_minute:
            return 0.0
        rate = self.per_minute / 60.0
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(tenant, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[tenant] = (tokens - 1.0, now)
                return 0.0
            self._buckets[tenant] = (tokens, now)
            return (1.0 - tokens) / rate

    def refund(self, tenant: str | None) -> None:
        """Give back a token taken for a request that was then refused (bad input, store away)."""
        if not self.per_minute:
            return
        with self._lock:
            tokens, at = self._buckets.get(tenant, (float(self.per_minute), self.clock()))
            self._buckets[tenant] = (min(float(self.per_minute), tokens + 1.0), at)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value (whole seconds, at least 1) for a wait of ``seconds``."""
    return str(max(1, math.ceil(seconds)))


class PageBacklog:
    """The page tasks the OCR workers' consumer group has not committed yet on one page topic
    (a priority lane's, :mod:`topology.pages`): the sum over the topic's partitions of ``high
    watermark - committed offset`` (``- low watermark`` where the group has committed nothing, or
    below it: it reads from the earliest record). Measured with the admin API (the group's
    committed offsets, list offsets) at most every ``cache_s`` seconds.

    Args:
        admin: admin client of the cluster.
        topic: the page topic (full name).
        group: the workers' consumer group (full id).
        cache_s: how long a measurement is reused (seconds).
        lane, profile: the ``lane`` and ``profile`` labels of ``ocrstream_gateway_page_backlog``.
    """

    def __init__(self, admin: AdminClient, topic: str, group: str, cache_s: float, timeout_s: float = 10.0,
                 lane: str = "batch", profile: str = "default"):
        self.admin, self.topic, self.group, self.lane, self.profile = admin, topic, group, lane, profile
        self.cache_s, self.timeout_s = cache_s, timeout_s
        self._lock = threading.Lock()
        self._value: int | None = None
        self._at = -math.inf

    def pages(self) -> int:
        """The backlog (page tasks), measured now or at most ``cache_s`` ago.

        Raises:
            KafkaException: the broker did not answer (no cached value is used then: it would be stale).
        """
        with self._lock:  # one measurement at a time; concurrent callers reuse it
            if time.monotonic() - self._at < self.cache_s and self._value is not None:
                return self._value
            self._value = self._measure()
            self._at = time.monotonic()
            GATEWAY_PAGE_BACKLOG.labels(self.lane, self.profile).set(self._value)
            return self._value

    def _measure(self) -> int:
        parts = [TopicPartition(self.topic, p) for p in topic_partitions(self.admin, self.topic, self.timeout_s)]
        req = [ConsumerGroupTopicPartitions(self.group, parts)]
        committed = {tp.partition: tp.offset for tp in
                     self.admin.list_consumer_group_offsets(req, request_timeout=self.timeout_s)[self.group]
                     .result(self.timeout_s).topic_partitions}
        ends = self._offsets(parts, OffsetSpec.latest())
        starts = self._offsets(parts, OffsetSpec.earliest())
        lag = 0
        for tp in parts:
            # No commit (negative) or one below what retention kept: the group reads from the earliest record.
            done = max(committed.get(tp.partition, -1), starts[tp.partition])
            lag += max(0, ends[tp.partition] - done)
        return lag

    def _offsets(self, parts: list[TopicPartition], spec) -> dict[int, int]:
        futures = self.admin.list_offsets({tp: spec for tp in parts}, request_timeout=self.timeout_s)
        return {tp.partition: f.result(self.timeout_s).offset for tp, f in futures.items()}
