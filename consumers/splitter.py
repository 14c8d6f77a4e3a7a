"""Splitter: document reference (ingest topic) -> page work items (pages topic).

For each DocumentRef the splitter downloads the object once, identifies it
from its bytes and counts its pages (PDF via PyMuPDF, images via Pillow),
enforcing the size/page/pixel limits, then publishes one PageTask per page.
Page tasks reference the object in storage; workers render their own page, so
no pixels travel through Kafka.

Placement: the pages of one document go to *consecutive* partitions of the
pages topic, starting at ``crc32(document_id) mod partitions`` (see
:class:`PagePlacement`), so every consumer of the group gets an even share of
every document. Hashing the ``document_id/page`` key would spread them only at
random: measured on 5 scanned documents (33 pages + warm-up) with 2 workers,
one worker got 28 pages and the other 17, and the run lasted as long as the
busier one needed.

Anything wrong with a document becomes a dead-letter record plus a ``failed``
document result (when its id is known); the partition never stops.
"""

from __future__ import annotations

import logging
import time
import zlib

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from ocrstream import metrics as m
from ocrstream.documents import inspect
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import make_consumer
from ocrstream.settings import Settings
from ocrstream.storage import ObjectStore, validate_key
from schemas import DocumentRef, ObjectRef, PageTask, decode, encode

from .common import StopFlag, dead_letter, dead_letter_headers, failed_document, guess_document_id, retry_transient
from .delivery import Delivery, Output

log = logging.getLogger(__name__)

STAGE = "splitter"


class PagePlacement:
    """Partition of each page task: consecutive partitions per document.

    Page *n* (1-based) of document *d* goes to ``(crc32(d) + n - 1) mod P``, P being the
    partition count of the pages topic (read from the cluster metadata, cached for
    ``ttl_s`` so a topic grown with ``kafka-topics --alter`` is picked up). Deterministic:
    a replayed ingest record places its pages as before. When the metadata cannot be
    read, :meth:`partition` returns None and the producer hashes the key instead.

    Args:
        producer: any client with ``list_topics`` (the splitter's producer).
        topic: the pages topic.
        ttl_s: seconds between metadata reads.
    """

    def __init__(self, producer: Producer, topic: str, ttl_s: float = 60.0):
        self.producer, self.topic, self.ttl_s = producer, topic, ttl_s
        self._count: int | None = None
        self._read_at = float("-inf")

    def partitions(self) -> int | None:
        """Partition count of the pages topic, or None when unknown."""
        if time.monotonic() - self._read_at >= self.ttl_s:
            try:
                md = self.producer.list_topics(self.topic, timeout=5).topics.get(self.topic)
                if md is not None and md.error is None and md.partitions:
                    self._count = len(md.partitions)
                    self._read_at = time.monotonic()
            except KafkaException as exc:
                log.warning("metadata of %s unavailable (%s): hashing page keys instead", self.topic, exc)
        return self._count

    def partition(self, document_id: str, page_number: int) -> int | None:
        """Partition for page ``page_number`` (1-based) of ``document_id``, or None (hash the key)."""
        n = self.partitions()
        if not n:
            return None
        return (zlib.crc32(document_id.encode()) + page_number - 1) % n


class Splitter:
    """Consume-transform-produce loop over the ingest topic (one record at a time)."""

    def __init__(self, s: Settings, stop: StopFlag | None = None):
        self.s = s
        self.stop = stop or StopFlag()
        self.store = ObjectStore(s)
        self.consumer = make_consumer(s, s.group(STAGE))
        self.delivery = Delivery(s, self.consumer, STAGE)
        self.placement = PagePlacement(self.delivery.producer, s.topic("pages"))

    def handle(self, msg: Message) -> list[Output]:
        """Outputs for one ingest record: page tasks, or a dead letter and a failed result."""
        s = self.s
        size = len(msg.value() or b"")
        ref: DocumentRef | None = None
        try:
            if size > s.max_message_bytes:
                raise OcrstreamError(ReasonCode.MESSAGE_TOO_LARGE, f"value is {size} bytes, limit {s.max_message_bytes}")
            ref = decode(msg.value(), DocumentRef)
            key = validate_key(ref.source.key)
            data = retry_transient(
                lambda: self.store.get_bytes(ref.source.bucket, key, s.max_object_bytes, ref.source.version_id),
                stop=self.stop.event,
            )
            info = inspect(data, ref.source.filename, max_pages=s.max_pages, max_page_pixels=s.max_page_pixels)
        except OcrstreamError as exc:
            return self._failure_outputs(msg, exc, ref)
        dpi = (ref.options.dpi or s.render_dpi) if info.kind == "pdf" else None
        source = ref.source.model_copy(update={"size": len(data)})
        return [
            Output(s.topic("pages"), f"{ref.document_id}/{n}", encode(PageTask(
                document_id=ref.document_id, source=source, page_number=n, page_count=info.page_count,
                kind=info.kind, dpi=dpi, submitted_at=ref.submitted_at,
            )), partition=self.placement.partition(ref.document_id, n))
            for n in range(1, info.page_count + 1)
        ]

    def _failure_outputs(self, msg: Message, exc: OcrstreamError, ref: DocumentRef | None) -> list[Output]:
        doc_id = ref.document_id if ref else guess_document_id(msg.value())
        log.warning("ingest %s[%d]@%d refused: %s", msg.topic(), msg.partition(), msg.offset(), exc)
        dl = dead_letter(msg, exc, STAGE, attempts=getattr(exc, "attempts", 1), document_id=doc_id)
        m.DEAD_LETTERS.labels(STAGE, dl.reason).inc()
        outs = [Output(self.s.topic("dead-letters"), dl.key, encode(dl), dead_letter_headers(dl))]
        if doc_id:
            source: ObjectRef | None = ref.source if ref else None
            result = failed_document(doc_id, exc, source, ref.submitted_at if ref else None)
            outs.append(Output(self.s.topic("document-results"), doc_id, encode(result)))
        return outs

    def run(self) -> None:
        """Poll until stopped (SIGTERM/SIGINT), then commit and leave the group."""
        # /readyz reads this set, kept by the rebalance callbacks (which run inside poll()): calling
        # consumer.assignment() from the HTTP thread can block while poll() runs in this one.
        assigned: set[int] = set()
        self.consumer.subscribe([self.s.topic("ingest")],
                                on_assign=lambda c, ps: assigned.update(p.partition for p in ps),
                                on_revoke=lambda c, ps: assigned.difference_update(p.partition for p in ps),
                                on_lost=lambda c, ps: assigned.difference_update(p.partition for p in ps))
        http = m.serve_if_configured(self.s.http_port, lambda: bool(assigned))
        try:
            while not self.stop.is_set():
                msg = self.consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", msg.error())
                    continue
                m.MESSAGES_CONSUMED.labels(STAGE).inc()
                outputs = self.handle(msg)
                self.delivery.publish(outputs, [TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)])
                for out in outputs:
                    m.MESSAGES_PRODUCED.labels(STAGE, out.topic).inc()
        finally:
            if http:
                http.close()
            self.delivery.close()
            self.consumer.close()


def run_splitter(s: Settings, stop: StopFlag | None = None) -> None:
    """Run the splitter stage until SIGTERM/SIGINT (or ``stop``)."""
    Splitter(s, stop).run()
