"""Delivery reports that do not prove a record is in the log (ocrstream/kafka.py DeliveryTracker):
a success without an offset (librdkafka's answer to DUPLICATE_SEQUENCE_NUMBER) counts as failed,
and the publisher produces such a reference again instead of losing it."""

from __future__ import annotations

from confluent_kafka import KafkaError

from ocrstream.kafka import DeliveryTracker
from producers.publish import DocumentPublisher
from schemas import DocumentRef, ObjectRef

from conftest import base_settings


class _Msg:
    def __init__(self, topic, value, key, offset):
        self._t, self._v, self._k, self._o = topic, value, key, offset

    def topic(self):
        return self._t

    def value(self):
        return self._v

    def key(self):
        return self._k

    def partition(self):
        return 0

    def offset(self):
        return self._o


def test_a_success_without_offset_is_a_retriable_failure():
    t = DeliveryTracker()
    t.callback(None, _Msg("ingest", b"v", b"k", 7))
    assert t.delivered == 1 and not t.errors
    t.callback(None, _Msg("ingest", b"v", b"k", None))
    t.callback(None, _Msg("ingest", b"v", b"k", -1001))
    assert t.delivered == 1 and len(t.failed) == 2
    assert all(e.code() == KafkaError.DUPLICATE_SEQUENCE_NUMBER and e.retriable() for e in t.errors)


class _FlakyProducer:
    """Acknowledges the first send of every record without an offset, later sends with one."""

    def __init__(self):
        self.sent: list[bytes] = []
        self.pending = []

    def produce(self, topic, value, key, on_delivery=None):
        first = key not in self.sent
        self.sent.append(key)
        self.pending.append((on_delivery, _Msg(topic, value, key, None if first else len(self.sent))))

    def poll(self, timeout):
        return self.flush(timeout)

    def flush(self, timeout):
        pending, self.pending = self.pending, []
        for cb, msg in pending:
            cb(None, msg)
        return 0


def test_publisher_produces_an_unconfirmed_reference_again():
    s = base_settings()
    producer = _FlakyProducer()
    pub = DocumentPublisher(s, producer=producer)
    for i in range(3):
        pub.publish_ref(DocumentRef(document_id=f"d{i}", submitted_at=1,
                                    source=ObjectRef(bucket="ocrstream", key=f"uploads/{i}.pdf", filename=f"{i}.pdf")))
    pub.flush()  # no PublishError: each was produced again and then acknowledged with an offset
    assert sorted(producer.sent) == sorted(["d0", "d1", "d2"] * 2)
