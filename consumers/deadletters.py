"""``ocrstream dlq list|replay``: inspect dead letters and re-drive them after a fix.

Replay re-produces each dead letter's original value (kept in full when it was
under 64 KiB) to its original topic with its original key, and commits its
position in the ``dlq-replay`` consumer group, so a dead letter is re-driven
once. Truncated values cannot be replayed and are reported.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from ocrstream.errors import OcrstreamError
from ocrstream.kafka import consumer_config, producer_config
from ocrstream.settings import Settings
from schemas import DeadLetter, decode

log = logging.getLogger(__name__)


def _read(consumer: Consumer, timeout_s: float, limit: int):
    """Yield (message, DeadLetter) until every assigned partition reached its end."""
    eof: set[int] = set()
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline and count < limit:
        assignment = consumer.assignment()
        if assignment and len(eof) >= len(assignment):
            return
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                eof.add(msg.partition())
            continue
        eof.discard(msg.partition())
        try:
            yield msg, decode(msg.value(), DeadLetter)
        except OcrstreamError:
            log.warning("not a dead letter at %s[%d]@%d", msg.topic(), msg.partition(), msg.offset())
        count += 1


def list_dead_letters(s: Settings, limit: int = 1000, timeout_s: float = 30.0) -> list[DeadLetter]:
    """All dead letters from the beginning of the topic (at most ``limit``)."""
    conf = consumer_config(s, f"{s.group('dlq-list')}-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
    consumer = Consumer(conf)
    consumer.subscribe([s.topic("dead-letters")])
    try:
        return [dl for _, dl in _read(consumer, timeout_s, limit)]
    finally:
        consumer.close()


def replay_dead_letters(s: Settings, reason: str | None = None, limit: int = 1000, timeout_s: float = 30.0) -> int:
    """Re-drive dead letters (optionally only one reason code); returns how many were re-produced."""
    consumer = Consumer(consumer_config(s, s.group("dlq-replay"), **{"enable.partition.eof": True}))
    producer = Producer(producer_config(s))
    consumer.subscribe([s.topic("dead-letters")])
    replayed = 0
    try:
        for msg, dl in _read(consumer, timeout_s, limit):
            if (reason is None or dl.reason == reason) and dl.value is not None:
                if dl.value_truncated:
                    log.warning("dead letter %s@%d has a truncated value: not replayable", dl.topic, dl.offset)
                else:
                    producer.produce(dl.topic, dl.value.encode(), dl.key)
                    replayed += 1
            producer.flush(30)
            consumer.commit(offsets=[TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)],
                            asynchronous=False)
    finally:
        producer.flush(30)
        consumer.close()
    return replayed
