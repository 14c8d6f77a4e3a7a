"""The one commit policy: publishing a unit of work's outputs with the input offsets they cover.

Two modes (``OCRSTREAM_DELIVERY``):

- ``at-least-once`` (default): produce the outputs (acks=all, idempotent producer),
  ``flush()`` until every delivery report is in, and only then commit the input offsets
  synchronously. A crash in between replays the inputs; outputs are keyed so a replay
  overwrites rather than adds.
- ``exactly-once``: Kafka transactions (KIP-98/KIP-447): outputs and
  ``send_offsets_to_transaction`` in one transaction, so a read_committed consumer sees
  each output once.

What a failure means (the caller, :class:`~ocrstream.streaming.loop.StageRuntime`, acts on it):

- :class:`DeliveryError` (at-least-once): an output was not acknowledged; nothing was
  committed. Re-publishing the same outputs is safe (keyed, idempotent producer).
- :class:`TransactionAborted` (exactly-once): an abortable transaction error; the
  transaction was aborted, so the stage must rewind to the committed offsets and drop
  the in-memory effects of the aborted records.
- :class:`FatalKafkaError`: the producer is unusable (fenced by a newer instance with the
  same ``transactional.id``, or a commit that timed out twice); the process must exit and
  be restarted.
- A ``send_offsets_to_transaction`` still blocked ``HUNG_GRACE_S`` after its timeout: the
  process exits at once with status 2, as after a fatal error (see :func:`_exit_if_hung`).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

from ocrstream.kafka import DeliveryTracker, make_admin, producer_config
from ocrstream.settings import Settings

from . import faults

log = logging.getLogger(__name__)

HUNG_GRACE_S = 30.0
"""How long past its own timeout a transactional call may block before the process exits."""


def _exit_if_hung(stage: str, what: str, timeout_s: float) -> None:
    """Called by a timer when a transactional call is still blocked: exit with status 2 (the
    stage runtime's EXIT_FATAL) for the supervisor to restart the process.

    Why: ``send_offsets_to_transaction`` can block past its timeout, indefinitely, when the group
    coordinator's broker went away (librdkafka #5456, #5511, open in 2.16). Seen on the 3-broker
    test cluster after the coordinator's broker was killed: an exactly-once worker blocked in it
    for over 5 minutes, its partitions' pages never OCR'd. A call blocked in C cannot be
    interrupted; the restarted instance fences this one's ``transactional.id``, aborting its open
    transaction, and reads on from the committed offsets."""
    log.critical("%s: %s still blocked %.0fs after its %.0fs timeout (librdkafka #5456): exiting for a restart",
                 stage, what, HUNG_GRACE_S, timeout_s)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(2)


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


class CommitFailed(RuntimeError):
    """The outputs are durable but the offset commit failed (at-least-once); ``error`` is the
    librdkafka error (e.g. the partitions moved to another member)."""

    def __init__(self, error: KafkaError):
        super().__init__(f"offset commit failed: {error}")
        self.error = error


class TransactionAborted(RuntimeError):
    """The transaction was aborted (abortable error): rewind to the committed offsets."""


class FatalKafkaError(RuntimeError):
    """A Kafka error the process cannot recover from (fenced, fatal client error, commit timed
    out twice): exit non-zero so the supervisor restarts it."""


def transactional_id(s: Settings, stage: str) -> str:
    """``<group>-<worker_id>``: stable across restarts of the same instance (``OCRSTREAM_WORKER_ID``
    defaults to the host name, i.e. the pod name; ``ocrstream run`` sets one per child), so a
    restarted instance fences its zombie at once (KIP-98) instead of leaving its open
    transaction to block ``read_committed`` readers for ``transaction.timeout.ms``."""
    return f"{s.group(stage)}-{s.worker_id}"


def check_transaction_timeout(s: Settings, timeout_ms: int, timeout_s: float = 10.0) -> None:
    """Refuse to start when ``transaction.timeout.ms`` exceeds the brokers' ``transaction.max.timeout.ms``
    (``init_transactions`` would fail with the opaque ``INVALID_TRANSACTION_TIMEOUT``).

    Raises:
        FatalKafkaError: the limit is lower, with what to change. Brokers that cannot be
            described (no DescribeConfigs ACL) are not checked.
    """
    admin = make_admin(s)
    try:
        brokers = admin.list_topics(timeout=timeout_s).brokers
        if not brokers:
            return
        res = ConfigResource(ResourceType.BROKER, str(next(iter(brokers))))
        configs = admin.describe_configs([res], request_timeout=timeout_s)[res].result(timeout_s)
        limit = int(configs["transaction.max.timeout.ms"].value)
    except (KafkaException, KeyError, ValueError) as exc:
        log.info("transaction.max.timeout.ms not checked: %s", exc)
        return
    if timeout_ms > limit:
        raise FatalKafkaError(
            f"transaction.timeout.ms {timeout_ms} exceeds the brokers' transaction.max.timeout.ms {limit}: "
            f"lower OCRSTREAM_PAGE_TIMEOUT_S (the transaction timeout is max(60 s, 2 x page timeout)) "
            f"or raise transaction.max.timeout.ms on the brokers")


class Delivery:
    """Produces outputs and commits offsets in the configured delivery mode.

    Args:
        s: settings (``delivery`` selects the mode).
        consumer: the stage's consumer (offsets are committed through it, or
            sent to the transaction with its group metadata).
        stage: stage name, part of the ``transactional.id``.
        transactional: override the mode (the drop-folder watcher is always transactional).
        tid: override the ``transactional.id`` (default :func:`transactional_id`).

    Raises:
        FatalKafkaError: the transaction timeout exceeds the brokers' limit, or
            ``init_transactions`` failed fatally.
    """

    def __init__(self, s: Settings, consumer: Consumer | None, stage: str, *, transactional: bool | None = None,
                 tid: str | None = None):
        self.consumer = consumer
        self.stage = stage
        self.transactional = s.delivery == "exactly-once" if transactional is None else transactional
        tid = (tid or transactional_id(s, stage)) if self.transactional else None
        self.tracker = DeliveryTracker()
        conf = producer_config(s, transactional_id=tid)
        self.producer = Producer(conf)
        if self.transactional:
            check_transaction_timeout(s, int(conf["transaction.timeout.ms"]))
            try:
                # Fences an older instance with the same transactional.id and aborts its open transaction.
                self.producer.init_transactions(60)
            except KafkaException as exc:
                raise FatalKafkaError(f"init_transactions({tid}) failed: {exc}") from exc

    def publish(self, outputs: list[Output], offsets: list[TopicPartition], timeout_s: float = 60.0) -> None:
        """Produce ``outputs``, then commit ``offsets`` (next offsets to read).

        Raises:
            DeliveryError: an output was refused or not acknowledged; nothing was committed
                (at-least-once), or the transaction was aborted (exactly-once).
            CommitFailed: the outputs are durable, the offset commit failed (at-least-once), e.g.
                the partitions were revoked meanwhile (the new owner replays them).
            TransactionAborted: the transaction was aborted (exactly-once): rewind.
            FatalKafkaError: fenced or otherwise unrecoverable: exit.
        """
        if self.transactional:
            self._publish_transaction(outputs, offsets, timeout_s)
            return
        self.tracker.reset()
        for out in outputs:
            self._produce(out)
        remaining = self.producer.flush(timeout_s)
        if remaining or self.tracker.errors:
            fatal = [e for e in self.tracker.errors if e.fatal()]
            if fatal:
                raise FatalKafkaError(f"producer failed fatally: {fatal[0]}")
            raise DeliveryError(f"{remaining} undelivered, errors: {[str(e) for e in self.tracker.errors[:3]]}")
        faults.fault_point(f"{self.stage}.after_produce")
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                raise CommitFailed(exc.args[0]) from exc
        faults.fault_point(f"{self.stage}.after_commit")

    def _publish_transaction(self, outputs: list[Output], offsets: list[TopicPartition], timeout_s: float) -> None:
        try:
            self.producer.begin_transaction()
            try:
                for out in outputs:
                    self._produce(out)
            except DeliveryError:
                self.producer.abort_transaction(timeout_s)  # nothing of this unit may be committed
                raise
            if offsets:
                watchdog = threading.Timer(timeout_s + HUNG_GRACE_S, _exit_if_hung,
                                           (self.stage, "send_offsets_to_transaction", timeout_s))
                watchdog.daemon = True
                watchdog.start()
                try:
                    self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(),
                                                              timeout_s)
                finally:
                    watchdog.cancel()
            faults.fault_point(f"{self.stage}.after_produce")
            self._commit_transaction(timeout_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.fatal():
                raise FatalKafkaError(f"transaction failed fatally (fenced?): {err}") from exc
            if err.txn_requires_abort():
                try:
                    self.producer.abort_transaction(timeout_s)
                except KafkaException as abort_exc:
                    raise FatalKafkaError(f"abort_transaction failed: {abort_exc}") from abort_exc
                raise TransactionAborted(f"transaction aborted: {err}") from exc
            raise FatalKafkaError(f"transaction failed: {err}") from exc
        faults.fault_point(f"{self.stage}.after_commit")

    def _commit_transaction(self, timeout_s: float) -> None:
        try:
            self.producer.commit_transaction(timeout_s)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if not err.retriable():
                raise
            # commit_transaction may be retried once (librdkafka transactional API contract);
            # a second timeout is fatal for this instance: the restart fences this producer.
            log.warning("commit_transaction timed out (%s): retrying once", err)
            try:
                self.producer.commit_transaction(timeout_s)
            except KafkaException as exc2:
                raise FatalKafkaError(f"commit_transaction failed twice: {exc2}") from exc2

    def _produce(self, out: Output) -> None:
        """Queue one output.

        Raises:
            DeliveryError: the client refused it at once (too large, unknown topic or partition):
                never mistaken for a commit failure, so the offsets are not committed.
        """
        while True:
            try:
                kwargs = {} if out.partition is None else {"partition": out.partition}
                self.producer.produce(out.topic, out.value, out.key, headers=out.headers or None,
                                      on_delivery=self.tracker.callback, **kwargs)
                return
            except BufferError:
                # Local queue full: serve delivery reports, then try again.
                self.producer.poll(0.1)
            except KafkaException as exc:
                raise DeliveryError(f"{out.topic}: record refused by the client: {exc.args[0]}") from exc

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (bounded by ``timeout_s``)."""
        self.producer.flush(timeout_s)
