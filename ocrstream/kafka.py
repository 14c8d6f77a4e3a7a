"""librdkafka client configuration built from settings, plus small shared helpers.

Security settings (SASL PLAIN/SCRAM, TLS CA, client certificates) pass through
unchanged. Passwords come from ``SecretStr`` fields and are never logged.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from .settings import Settings

log = logging.getLogger(__name__)


def common_config(s: Settings) -> dict[str, Any]:
    """bootstrap.servers and security.* for any client."""
    conf: dict[str, Any] = {
        "bootstrap.servers": s.kafka_bootstrap_servers,
        "security.protocol": s.kafka_security_protocol,
        "client.id": f"ocrstream-{s.worker_id}",
    }
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
        # Sized for the longest batch: a transaction spans one micro-batch.
        conf["transaction.timeout.ms"] = max(60_000, int(s.page_timeout_s * 1000 * 2))
    conf.update(extra)
    return conf


def consumer_config(s: Settings, group: str, **extra: Any) -> dict[str, Any]:
    """Consumer with manual commits, cooperative rebalancing and bounded prefetch.

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
    return AdminClient(common_config(s))


class DeliveryTracker:
    """Collects producer delivery reports so a stage can tell whether outputs landed.

    Use :meth:`callback` as ``on_delivery``; after ``producer.flush()``,
    :attr:`errors` holds every failed delivery.
    """

    def __init__(self) -> None:
        self.errors: list[KafkaError] = []
        self.delivered = 0

    def callback(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.errors.append(err)
            log.error("delivery to %s failed: %s", msg.topic(), err)
        else:
            self.delivered += 1

    def reset(self) -> None:
        self.errors.clear()
        self.delivered = 0
