"""``ocrstream dlq list|replay``: inspect dead letters and re-drive them after a fix.

Replay re-produces each dead letter's original value (kept in full when it was
under 64 KiB) to its original topic with its original key, and commits its
position in the ``dlq-replay`` consumer group once the re-produced record is
acknowledged, so a dead letter is re-driven once, and one that could not be
re-produced is tried again by the next replay. Truncated values cannot be
replayed and are reported.
"""

from __future__ import annotations

import logging
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from ocrstream.errors import OcrstreamError
from ocrstream.kafka import DeliveryTracker, assign_all, consumer_config, producer_config, read_to_end
from ocrstream.settings import Settings
from schemas import DeadLetter, decode

log = logging.getLogger(__name__)


def _dead_letters(s: Settings, consumer: Consumer, start: str, timeout_s: float, limit: int):
    """Yield (message, DeadLetter) from ``start`` to the end of the topic (at most ``limit``)."""
    assignment = assign_all(consumer, s.topic("dead-letters"), start)
    for n, msg in enumerate(read_to_end(consumer, assignment, timeout_s)):
        if n >= limit:
            return
        try:
            yield msg, decode(msg.value(), DeadLetter)
        except OcrstreamError:
            log.warning("not a dead letter at %s[%d]@%d", msg.topic(), msg.partition(), msg.offset())


def _consumer(s: Settings, group: str) -> Consumer:
    return Consumer(consumer_config(s, group, **{"enable.partition.eof": True}))


def list_dead_letters(s: Settings, limit: int = 1000, timeout_s: float = 30.0) -> list[DeadLetter]:
    """All dead letters from the beginning of the topic (at most ``limit``)."""
    consumer = _consumer(s, f"{s.group('dlq-list')}-{uuid.uuid4().hex[:8]}")
    try:
        return [dl for _, dl in _dead_letters(s, consumer, "beginning", timeout_s, limit)]
    finally:
        consumer.close()


class ReplayError(RuntimeError):
    """A dead letter could not be re-produced; its position was not committed, so the
    next replay starts with it again."""


def replay_dead_letters(s: Settings, reason: str | None = None, limit: int = 1000, timeout_s: float = 30.0) -> int:
    """Re-drive dead letters (optionally only one reason code); returns how many were re-produced.

    A dead letter's position is committed in the ``dlq-replay`` group only after its
    re-produced record was acknowledged (delivery report without error), so a replay
    that fails part-way can be run again without skipping anything (a record
    acknowledged just before a failed commit is produced again: at-least-once).

    Args:
        timeout_s: how long to wait for the end of the dead-letter topic, and for each
            re-produced record's acknowledgement, seconds.

    Raises:
        ReplayError: a re-produced record was not acknowledged within ``timeout_s`` (or
            the broker refused it, e.g. larger than the target topic's
            ``max.message.bytes``, or the topic does not exist); nothing from that dead
            letter on was committed.
        KafkaException: committing a position failed.
    """
    consumer = _consumer(s, s.group("dlq-replay"))
    producer = Producer(producer_config(s))
    tracker = DeliveryTracker()
    replayed = 0
    try:
        for msg, dl in _dead_letters(s, consumer, "committed", timeout_s, limit):
            if (reason is None or dl.reason == reason) and dl.value is not None:
                if dl.value_truncated:
                    log.warning("dead letter %s@%d has a truncated value: not replayable", dl.topic, dl.offset)
                else:
                    tracker.reset()
                    try:
                        producer.produce(dl.topic, dl.value.encode(), dl.key, on_delivery=tracker.callback)
                    except (BufferError, KafkaException) as exc:
                        raise ReplayError(f"dead letter at {msg.topic()}[{msg.partition()}]@{msg.offset()} "
                                          f"could not be re-produced to {dl.topic}: {exc}") from exc
                    remaining = producer.flush(timeout_s)
                    if remaining or tracker.errors or tracker.delivered != 1:
                        detail = str(tracker.errors[0]) if tracker.errors else f"not acknowledged within {timeout_s}s"
                        raise ReplayError(f"dead letter at {msg.topic()}[{msg.partition()}]@{msg.offset()} "
                                          f"was not re-produced to {dl.topic}: {detail}; its position is not "
                                          f"committed ({replayed} replayed before it)")
                    replayed += 1
            consumer.commit(offsets=[TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)],
                            asynchronous=False)
    finally:
        producer.flush(min(timeout_s, 30))
        consumer.close()
    return replayed
