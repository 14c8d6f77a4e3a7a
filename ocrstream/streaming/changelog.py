"""Reading a compacted state topic's partitions to their end: the one restore loop.

Used by the assembler (its changelog) and the OCR worker (its in-flight marks) from inside
the rebalance callback, so the assigned input partitions are not fetched before their
state is back (as Quix Streams' ``state/recovery.py`` keeps data partitions paused).
"""

from __future__ import annotations

import time
import uuid
from typing import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import consumer_config
from ocrstream.settings import Settings

IDLE_TIMEOUT_S = 60.0  # a restore gives up when the topic sends nothing for this long


def read_partitions(s: Settings, topic: str, partitions: list[int],
                    idle_timeout_s: float = IDLE_TIMEOUT_S) -> Iterator[Message]:
    """Yield every record of ``topic``'s ``partitions`` from the beginning up to their end
    (the last stable offset: read_committed), tombstones included (value None).

    Raises:
        OcrstreamError: ``storage_error`` (transient) when the topic sends nothing (not even
            its end) for ``idle_timeout_s`` seconds: state must never be used half-read.
    """
    if not partitions:
        return
    conf = consumer_config(s, f"{s.group('restore')}-{uuid.uuid4().hex[:8]}",
                           **{"enable.partition.eof": True, "fetch.wait.max.ms": 50})
    conf.pop("group.instance.id", None)  # assign() only: never joins a group
    consumer = Consumer(conf)
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + idle_timeout_s
        while pending:
            msgs = consumer.consume(1000, 0.1)
            if not msgs and time.monotonic() > deadline:
                raise OcrstreamError(ReasonCode.STORAGE_ERROR,
                                     f"restore of {topic} partitions {sorted(pending)} stalled", transient=True)
            for msg in msgs:
                deadline = time.monotonic() + idle_timeout_s
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    elif msg.error().fatal():
                        raise OcrstreamError(ReasonCode.STORAGE_ERROR, f"restore of {topic}: {msg.error()}")
                    continue
                yield msg
    finally:
        consumer.close()
