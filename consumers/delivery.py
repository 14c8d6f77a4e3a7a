"""Publishing a unit of work's outputs together with the input offsets they cover.

Two modes (``OCRSTREAM_DELIVERY``):

- ``at-least-once`` (default): produce the outputs (acks=all, idempotent
  producer), ``flush()`` until every delivery report is in, and only then
  commit the input offsets synchronously. A crash in between replays the
  inputs; outputs are keyed so a replay overwrites rather than adds.
- ``exactly-once``: Kafka transactions (KIP-98/KIP-447): outputs and
  ``send_offsets_to_transaction`` in one transaction, so a read_committed
  consumer sees each output once. Costs one transaction commit (a few ms
  on a local broker) per unit of work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ocrstream.kafka import DeliveryTracker, producer_config
from ocrstream.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Output:
    """One record to produce (``value`` None = tombstone; ``partition`` None = by key hash)."""

    topic: str
    key: str | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int | None = None


class DeliveryError(RuntimeError):
    """Outputs were not acknowledged by the broker; the inputs were not committed."""


class Delivery:
    """Produces outputs and commits offsets in the configured delivery mode.

    Args:
        s: settings (``delivery`` selects the mode).
        consumer: the stage's consumer (offsets are committed through it, or
            sent to the transaction with its group metadata).
        stage: stage name, part of the ``transactional.id``.
    """

    def __init__(self, s: Settings, consumer: Consumer, stage: str):
        self.consumer = consumer
        self.transactional = s.delivery == "exactly-once"
        tid = f"{s.group(stage)}-{s.worker_id}" if self.transactional else None
        self.tracker = DeliveryTracker()
        self.producer = Producer(producer_config(s, transactional_id=tid))
        if self.transactional:
            self.producer.init_transactions(30)

    def publish(self, outputs: list[Output], offsets: list[TopicPartition], timeout_s: float = 60.0) -> None:
        """Produce ``outputs``, then commit ``offsets`` (next offsets to read).

        Raises:
            DeliveryError: an output was not acknowledged; nothing was committed
                (at-least-once) or the transaction was aborted (exactly-once).
        """
        if self.transactional:
            self._publish_transaction(outputs, offsets, timeout_s)
            return
        self.tracker.reset()
        for out in outputs:
            self._produce(out)
        remaining = self.producer.flush(timeout_s)
        if remaining or self.tracker.errors:
            raise DeliveryError(f"{remaining} undelivered, errors: {[str(e) for e in self.tracker.errors[:3]]}")
        if offsets:
            self.consumer.commit(offsets=offsets, asynchronous=False)

    def _publish_transaction(self, outputs: list[Output], offsets: list[TopicPartition], timeout_s: float) -> None:
        self.producer.begin_transaction()
        try:
            for out in outputs:
                self._produce(out)
            if offsets:
                self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), timeout_s)
            self.producer.commit_transaction(timeout_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.txn_requires_abort():
                self.producer.abort_transaction(timeout_s)
                raise DeliveryError(f"transaction aborted: {err}") from exc
            if err.retriable():
                # commit_transaction may be retried (librdkafka transactional API contract).
                self.producer.commit_transaction(timeout_s)
                return
            raise

    def _produce(self, out: Output) -> None:
        while True:
            try:
                kwargs = {} if out.partition is None else {"partition": out.partition}
                self.producer.produce(out.topic, out.value, out.key, headers=out.headers or None,
                                      on_delivery=self.tracker.callback, **kwargs)
                return
            except BufferError:
                # Local queue full: serve delivery reports, then try again.
                self.producer.poll(0.1)

    def commit_offsets(self, offsets: list[TopicPartition]) -> None:
        """Commit offsets that need no outputs (at-least-once mode only; in
        exactly-once mode they go through an empty transaction)."""
        if not offsets:
            return
        if self.transactional:
            self._publish_transaction([], offsets, 30.0)
        else:
            self.consumer.commit(offsets=offsets, asynchronous=False)

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (bounded by ``timeout_s``)."""
        self.producer.flush(timeout_s)
