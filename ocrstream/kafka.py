"""librdkafka client configuration built from settings, plus small shared helpers.

Security settings (SASL PLAIN/SCRAM, TLS CA, client certificates) pass through
unchanged. Passwords come from ``SecretStr`` fields and are never logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from .retry import retry_for
from .settings import Settings

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection failures, retries, debug contexts) go through Python
# logging at the configured level instead of raw ``%3|...|FAIL|`` lines on stderr.
CLIENT_LOG = logging.getLogger("ocrstream.librdkafka")


def common_config(s: Settings) -> dict[str, Any]:
    """bootstrap.servers, security.* and logging for any client (librdkafka's log lines go to
    the ``ocrstream.librdkafka`` logger; ``OCRSTREAM_KAFKA_DEBUG`` turns on its debug contexts)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": s.kafka_bootstrap_servers,
        "security.protocol": s.kafka_security_protocol,
        "client.id": f"ocrstream-{s.worker_id}",
        "logger": CLIENT_LOG,
    }
    if s.kafka_debug:
        conf["debug"] = s.kafka_debug
    if s.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = s.kafka_sasl_mechanism
        conf["sasl.username"] = s.kafka_sasl_username or ""
        conf["sasl.password"] = s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else ""
    for key, value in (
        ("ssl.ca.location", s.kafka_ssl_ca_location),
        ("ssl.certificate.location", s.kafka_ssl_certificate_location),
        ("ssl.key.location", s.kafka_ssl_key_location),
    ):
        if value:
            conf[key] = value
    if s.kafka_ssl_key_password:
        conf["ssl.key.password"] = s.kafka_ssl_key_password.get_secret_value()
    return conf


def producer_config(s: Settings, transactional_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """Durable producer: acks=all + idempotence, so retries never duplicate or reorder."""
    conf = {
        **common_config(s),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": 33554432,
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
        # A transaction spans one publish (outputs + offsets of a finished batch), so it is short;
        # this only bounds how long a dead instance's open transaction can block readers.
        conf["transaction.timeout.ms"] = max(60_000, int(s.page_timeout_s * 1000 * 2))
    conf.update(extra)
    return conf


def consumer_config(s: Settings, group: str, **extra: Any) -> dict[str, Any]:
    """Consumer with manual commits, incremental rebalancing and bounded prefetch.

    ``kafka_group_protocol`` picks the classic protocol with the cooperative-sticky
    assignor, or the KIP-848 consumer protocol (broker-side assignment, no
    stop-the-world rebalances; GA in Apache Kafka 4.0).

    Offsets are committed explicitly after the outputs they cover are
    acknowledged (at-least-once), or sent inside the transaction (exactly-once).
    """
    conf = {
        **common_config(s),
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "isolation.level": "read_committed",
        "max.poll.interval.ms": s.max_poll_interval_ms,
        "session.timeout.ms": s.session_timeout_ms,
        # Bound the client's prefetch memory: page work items are small JSON.
        "queued.max.messages.kbytes": 16384,
        "fetch.max.bytes": 16 * 1024 * 1024,
    }
    if s.group_instance_id:
        conf["group.instance.id"] = s.group_instance_id
    if s.kafka_group_protocol == "consumer":
        # KIP-848: the broker assigns partitions and owns the session timeout; these client
        # settings are refused with group.protocol=consumer.
        conf["group.protocol"] = "consumer"
        for key in ("partition.assignment.strategy", "session.timeout.ms"):
            conf.pop(key)
    conf.update(extra)
    return conf


def make_producer(s: Settings, **extra: Any) -> Producer:
    """A durable producer (see :func:`producer_config`)."""
    return Producer(producer_config(s, **extra))


def make_consumer(s: Settings, group: str, **extra: Any) -> Consumer:
    """A manual-commit consumer (see :func:`consumer_config`)."""
    return Consumer(consumer_config(s, group, **extra))


def make_admin(s: Settings) -> AdminClient:
    """An admin client with the same security settings."""
    # No `logger`: confluent-kafka serves an AdminClient's log queue only in poll(), which a
    # long-lived admin client (assembler, watcher) never calls; its lines would pile up unseen.
    return AdminClient({k: v for k, v in common_config(s).items() if k != "logger"})


class DeliveryTracker:
    """Collects producer delivery reports so a stage can tell whether outputs landed.

    Use :meth:`callback` as ``on_delivery``; after ``producer.flush()``,
    :attr:`errors` holds every failed delivery and :attr:`failed` the messages.

    A report without error but without an offset is counted as failed: librdkafka >= 2.15
    reports a batch the broker answered ``DUPLICATE_SEQUENCE_NUMBER`` as delivered with an
    invalid offset (librdkafka #4438), and on this project's test machine such a report came
    with a record that was not in the log (a document reference silently lost, 1 in about 30
    runs of 50 references under load). Producing it again costs a duplicate at worst, which
    every consumer here tolerates (document ids, done markers, compacted results).
    """

    def __init__(self) -> None:
        self.errors: list[KafkaError] = []
        self.failed: list[Any] = []
        self.delivered = 0

    def callback(self, err: KafkaError | None, msg: Any) -> None:
        if err is None and (msg.offset() is None or msg.offset() < 0):
            err = KafkaError(KafkaError.DUPLICATE_SEQUENCE_NUMBER, "delivered without an offset (duplicate "
                             "sequence answer): not proof the record is in the log", retriable=True)
        if err is not None:
            self.errors.append(err)
            self.failed.append(msg)
            log.error("delivery to %s [%s] failed: %s", msg.topic(), msg.partition(), err)
        else:
            self.delivered += 1

    def reset(self) -> None:
        """Forget the reports so far (before the next batch of outputs)."""
        self.errors.clear()
        self.failed.clear()
        self.delivered = 0


def watermarks(consumer: Consumer, tp: TopicPartition, timeout_s: float = 30.0) -> tuple[int, int]:
    """(low, high) watermark offsets, retrying while leadership moves (e.g. just after a
    broker restart, when the broker answers NOT_LEADER_FOR_PARTITION for a few seconds).

    Raises:
        KafkaException: still failing after ``timeout_s``.
    """
    return retry_for(lambda: consumer.get_watermark_offsets(tp, timeout=10), timeout_s=timeout_s, on=KafkaException)


def topic_partitions(client: Consumer | Producer | AdminClient, topic: str, timeout_s: float = 30.0) -> list[int]:
    """Partition ids of ``topic``, waiting up to ``timeout_s`` for it to appear in the metadata
    (a topic created a moment ago can be missing from a broker's metadata for a while; an
    empty assignment would then wait forever for records).

    Raises:
        KafkaException: ``UNKNOWN_TOPIC_OR_PART`` when the topic is still missing after ``timeout_s``.
    """
    def lookup() -> list[int]:
        md = client.list_topics(topic, timeout=10).topics.get(topic)
        if md is not None and md.error is None and md.partitions:
            return sorted(md.partitions)
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topic {topic} not found"))

    return retry_for(lookup, timeout_s=timeout_s, on=KafkaException)


def assign_all(consumer: Consumer, topic: str, start: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` (no group rebalancing) from ``start``:
    ``beginning``, ``end`` (the high watermark now) or ``committed`` (the consumer
    group's committed offsets, the beginning where none). Returns the assignment.

    Raises:
        KafkaException: the topic does not appear within 30 s (:func:`topic_partitions`).
    """
    parts = [TopicPartition(topic, p) for p in topic_partitions(consumer, topic)]
    committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)} if start == "committed" else {}
    assignment = []
    for tp in parts:
        low, high = watermarks(consumer, tp)
        offset = {"beginning": low, "end": high}.get(start, committed.get(tp.partition, OFFSET_INVALID))
        assignment.append(TopicPartition(topic, tp.partition, offset if offset >= 0 else low))
    consumer.assign(assignment)
    return assignment


def read_to_end(consumer: Consumer, assignment: list[TopicPartition], timeout_s: float = 60.0):
    """Yield the records from an :func:`assign_all` assignment up to each partition's
    high watermark (the consumer needs ``enable.partition.eof=true``).

    Stops early after ``timeout_s`` (bounded even if a partition never reports its end).
    """
    pending = {tp.partition for tp in assignment if watermarks(consumer, tp)[1] > tp.offset}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                pending.discard(msg.partition())
            continue
        yield msg


def read_at(consumer: Consumer, topic: str, partition: int, offset: int, timeout_s: float,
            poll_s: float = 0.1) -> bytes | None:
    """The value of the record at ``topic[partition]@offset``, read with ``assign()`` (the
    consumer needs ``enable.partition.eof=true``; it is unassigned again before returning).

    Returns None when that offset holds no record any more: the partition ends before it, or the
    first record read is a later one (compaction, a tombstone's cleanup or retention removed it).

    Raises:
        KafkaException: ``_TIMED_OUT`` when nothing was read within ``timeout_s`` seconds.
    """
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(poll_s)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return None
                continue
            return msg.value() if msg.offset() == offset else None
    finally:
        consumer.unassign()
    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{topic}[{partition}]@{offset} not read in {timeout_s}s"))
