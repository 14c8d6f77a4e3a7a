"""Turning an HTTP submission into a DocumentRef on the tenant's ingest topic.

An upload is stored the way ``ocrstream submit`` stores it (``<upload_prefix><document_id>/<name>``;
for a tenant under its first allowed source, so its splitter may read it), a reference to a
stored object is checked against the tenant's allowed sources and stat'ed first, as
:meth:`producers.publish.DocumentPublisher.publish_object` does. Either way the value on the
topic is a reference, never the bytes.

Unlike :class:`~producers.publish.DocumentPublisher` (one flush for a batch), every request
waits for the acknowledgement of its own record: one producer is shared by all requests and a
background thread serves its delivery reports.
"""

from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import PurePosixPath

from confluent_kafka import KafkaError, Producer

from ocrstream.documents import content_type_for
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import producer_config
from ocrstream.lanes import allowed_lane
from ocrstream.page_ranges import normalize_page_ranges
from ocrstream.profiles import check_named_profile
from ocrstream.settings import Settings
from ocrstream.sources import allowed_sources, check_source
from ocrstream.storage import ObjectStore
from ocrstream.webhooks import check_webhook_url
from schemas import DocumentOptions, DocumentRef, ObjectRef, encode

from ..publish import PublishError, now_ms, stable_document_id

_UNSAFE = re.compile(r"[^A-Za-z0-9._()+ -]")


def safe_filename(name: str | None) -> str:
    """The last path segment of a client's file name, with characters outside letters, digits and
    ``._()+ -`` replaced by ``_`` (no ``/``, ``..`` or control characters reach an object key);
    ``upload`` when nothing is left."""
    base = _UNSAFE.sub("_", PurePosixPath((name or "").replace("\\", "/")).name).strip(" .")
    return base[:200] or "upload"


class Intake:
    """Stores uploads and publishes references for the gateway (thread-safe).

    Args:
        s: settings (bucket, upload prefix, tenants, limits).
        store: the object store.
        publish_timeout_s: how long a request waits for the broker's acknowledgement.
    """

    def __init__(self, s: Settings, store: ObjectStore, publish_timeout_s: float = 30.0):
        self.s = s
        self.store = store
        self.publish_timeout_s = publish_timeout_s
        # librdkafka gives up on a record when the request stops waiting, so a reference the client
        # was told failed (503) is not delivered later behind its back.
        self.producer = Producer(producer_config(s, **{"message.timeout.ms": int(publish_timeout_s * 1000)}))
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="gateway-deliveries", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.1)  # runs the delivery callbacks that complete the requests' futures

    def upload_target(self, tenant: str | None, document_id: str, filename: str) -> tuple[str, str]:
        """``(bucket, key)`` an upload of ``tenant`` is stored at: ``OCRSTREAM_BUCKET`` and
        ``<upload_prefix><id>/<name>`` for the default tenant, the tenant's first allowed source
        with ``<its prefix><upload_prefix><id>/<name>`` for a tenant.

        Raises:
            OcrstreamError: ``forbidden_source``: the splitter could not read it (settings).
        """
        if tenant is None:
            bucket, key = self.s.bucket, f"{self.s.upload_prefix}{document_id}/{filename}"
        else:
            rule = allowed_sources(self.s, tenant)[0]
            bucket, key = rule.bucket, f"{rule.prefix}{self.s.upload_prefix}{document_id}/{filename}"
        return bucket, check_source(self.s, bucket, key, tenant)

    def upload(self, tenant: str | None, filename: str | None, data: bytes, dpi: int | None = None,
               pages: str | None = None, no_cache: bool = False, webhook_url: str | None = None,
               priority: str | None = None, profile: str | None = None) -> str:
        """Store ``data`` and publish its reference on ``tenant``'s ingest topic; returns the new
        document id (a random 32-hex id, as ``ocrstream submit`` gives). ``pages``: page ranges
        to OCR (``"1-3,7"``), None = all; ``no_cache``: OCR it even when the result cache holds
        its result; ``webhook_url``: completion callback (one of the tenant's allowed hosts,
        :mod:`ocrstream.webhooks`), None = none; ``priority``: the lane (``interactive``, ``batch``;
        None: batch); ``profile``: the model profile asked for (None: the tenant's routing decides);
        pages, webhook, lane and profile checked before anything is stored.

        Raises:
            OcrstreamError: ``invalid_page_range``, ``invalid_webhook_url``, ``webhook_not_allowed``,
                ``lane_not_allowed``, ``profile_not_allowed``, ``forbidden_source`` (settings), ``invalid_key``,
                ``storage_error``,
                ``message_too_large``.
            PublishError: the broker did not acknowledge the reference.
        """
        pages = None if pages is None else normalize_page_ranges(pages)
        if webhook_url is not None:
            check_webhook_url(self.s, webhook_url, tenant)
        allowed_lane(self.s, tenant, priority)
        if profile is not None:
            check_named_profile(self.s, tenant, profile)
        document_id = uuid.uuid4().hex
        name = safe_filename(filename)
        bucket, key = self.upload_target(tenant, document_id, name)
        info = self.store.put_bytes(key, data, content_type_for(name), bucket=bucket)
        ref = DocumentRef(document_id=document_id, submitted_at=now_ms(), options=DocumentOptions(dpi=dpi),
                          source=ObjectRef(bucket=bucket, key=key, filename=name, etag=info.etag,
                                           version_id=info.version_id, size=info.size, content_type=info.content_type),
                          pages=pages, no_cache=no_cache or None, webhook_url=webhook_url, priority=priority,
                          profile=profile)
        self.publish(tenant, ref)
        return document_id

    def reference(self, tenant: str | None, bucket: str, key: str, dpi: int | None = None,
                  pages: str | None = None, no_cache: bool = False, webhook_url: str | None = None,
                  priority: str | None = None, profile: str | None = None) -> str:
        """Publish a reference to a stored object on ``tenant``'s ingest topic; returns its
        document id (:func:`~producers.publish.stable_document_id`: the same object version,
        options, pages, ``no_cache``, webhook and profile is the same document, so a resubmission is idempotent;
        the priority is not part of it: it changes when, not what, is read).

        Raises:
            OcrstreamError: ``invalid_page_range``, ``invalid_webhook_url``, ``webhook_not_allowed``
                (first), ``lane_not_allowed``, ``profile_not_allowed``, ``invalid_bucket``, ``invalid_key``, ``forbidden_source``
                (checked before anything is read), ``object_not_found``, ``storage_error``,
                ``message_too_large``.
            PublishError: the broker did not acknowledge the reference.
        """
        pages = None if pages is None else normalize_page_ranges(pages)
        if webhook_url is not None:
            check_webhook_url(self.s, webhook_url, tenant)
        allowed_lane(self.s, tenant, priority)
        if profile is not None:
            check_named_profile(self.s, tenant, profile)
        key = check_source(self.s, bucket, key, tenant)
        info = self.store.stat(bucket, key)
        options = DocumentOptions(dpi=dpi)
        ref = DocumentRef(
            document_id=stable_document_id(bucket, key, info.etag, info.version_id, options, tenant, pages,
                                           no_cache=no_cache, webhook_url=webhook_url, profile=profile),
            source=ObjectRef(bucket=bucket, key=key, filename=PurePosixPath(key).name, etag=info.etag,
                             version_id=info.version_id, size=info.size, content_type=info.content_type),
            submitted_at=now_ms(), options=options, pages=pages, no_cache=no_cache or None, webhook_url=webhook_url,
            priority=priority, profile=profile)
        self.publish(tenant, ref)
        return ref.document_id

    def publish(self, tenant: str | None, ref: DocumentRef, resend: int = 3) -> None:
        """Produce ``ref`` to ``tenant``'s ingest topic and wait for its acknowledgement.

        A report without an offset is produced again (``resend`` times), for the reason
        :class:`~ocrstream.kafka.DeliveryTracker` gives.

        Raises:
            OcrstreamError: ``message_too_large`` (over ``OCRSTREAM_MAX_MESSAGE_BYTES``).
            PublishError: not acknowledged within the timeout, or refused by the broker.
        """
        value = encode(ref)
        if len(value) > self.s.max_message_bytes:
            raise OcrstreamError(ReasonCode.MESSAGE_TOO_LARGE,
                                 f"reference is {len(value)} bytes, limit {self.s.max_message_bytes}")
        topic = self.s.tenant_topic(tenant, "ingest")
        for _ in range(resend + 1):
            done: Future = Future()

            def report(err, msg, done=done) -> None:
                if err is None and (msg.offset() is None or msg.offset() < 0):
                    err = KafkaError(KafkaError.DUPLICATE_SEQUENCE_NUMBER, "delivered without an offset",
                                     retriable=True)
                done.set_result(err)

            try:
                self.producer.produce(topic, value, ref.document_id, on_delivery=report)
            except BufferError as exc:  # the local queue is full: the broker is far behind or away
                raise PublishError(f"producer queue full: {exc}") from None
            try:
                err = done.result(self.publish_timeout_s + 5)  # the report comes by message.timeout.ms
            except FutureTimeout:
                raise PublishError(f"reference not acknowledged within {self.publish_timeout_s}s") from None
            if err is None:
                return
            if not err.retriable():
                raise PublishError(f"reference refused: {err.str()}")
        raise PublishError(f"reference not acknowledged after {resend} resends: {err.str()}")

    def close(self) -> None:
        """Deliver what is queued (up to 10 s), stop the delivery thread, close the producer."""
        self.producer.flush(10)
        self._stop.set()
        self._poller.join(5)
        self.producer.close()
