"""Library API for programs that publish document references.

    from producers.publish import DocumentPublisher
    with DocumentPublisher(settings) as pub:
        doc_id = pub.publish_object("ocrstream", "scans/a.pdf")      # already in the store
        doc_id = pub.upload_and_publish(Path("b.jpg"))                  # upload first

The value is a ``DocumentRef`` (a reference, never the file's bytes), keyed by
``document_id``. Delivery is acks=all with an idempotent producer; ``flush``
(or leaving the ``with`` block) raises if any reference was not acknowledged.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path, PurePosixPath

from confluent_kafka import KafkaError, Producer

from ocrstream.documents import content_type_for
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import DeliveryTracker, producer_config
from ocrstream.page_ranges import normalize_page_ranges
from ocrstream.settings import Settings
from ocrstream.sources import check_source
from ocrstream.storage import ObjectStore
from ocrstream.webhooks import check_webhook_url
from schemas import DocumentOptions, DocumentRef, ObjectRef, encode
from topology.pages import LANES


def now_ms() -> int:
    """Wall-clock time in ms since the Unix epoch (``DocumentRef.submitted_at``).

    Defined here, not imported from the stage runtime: a publishing program needs none of it, and
    producers never import consumers (import-linter contract in pyproject.toml).
    """
    return int(time.time() * 1000)


def stable_document_id(bucket: str, key: str, etag: str, version_id: str | None = None,
                       options: DocumentOptions | None = None, tenant: str | None = None,
                       pages: str | None = None, *, no_cache: bool = False, webhook_url: str | None = None,
                       profile: str | None = None) -> str:
    """A document id derived from the object version and the processing options:
    republishing the same version with the same options yields the same id, so its
    result overwrites itself in the compacted results topic (and the assembler's
    done marker drops duplicate pages); the same version with other options (e.g.
    another DPI) is another document. Options equal to :class:`DocumentOptions`'
    defaults (what the drop-folder watcher publishes) leave the id as it was before
    options were part of it. A tenant's id differs from another tenant's for the same object
    (the pipeline keeps them apart by tenant anyway, see ``topology.tenants``). Page ranges
    (``pages``, canonical form: :func:`~ocrstream.page_ranges.normalize_page_ranges`) are part of
    the identity too: the same version with other pages is another document (its result must not
    replace the other's); None leaves the id as before. ``no_cache`` (OCR even when the result
    cache has this document's result) makes another document too: with the same id, the done
    marker of the earlier one would drop its pages. So is a completion webhook (``webhook_url``):
    the assembler publishes one result per document, so a resubmission of a finished document that
    asks for a callback must be a new document to get one; None leaves the id as before. So is a
    model profile asked for (``profile``, ``DocumentRef.profile``): another profile's reading is
    another result. 32 hex chars (SHA-256 prefix)."""
    material = f"{bucket}\0{key}\0{etag}\0{version_id or ''}"
    if tenant is not None:
        material = f"tenant\0{tenant}\0{material}"
    if options is not None:
        # Canonical JSON of the options that differ from the defaults (sorted keys, no spaces).
        changed = options.model_dump(mode="json", exclude_defaults=True)
        if changed:
            material += "\0" + json.dumps(changed, sort_keys=True, separators=(",", ":"))
    if pages is not None:
        material += f"\0pages\0{pages}"
    if no_cache:
        material += "\0no_cache"
    if webhook_url is not None:
        material += f"\0webhook\0{webhook_url}"
    if profile is not None:
        material += f"\0profile\0{profile}"
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def _check_priority(priority: str | None) -> None:
    """Raises ValueError unless ``priority`` is None or a lane (:data:`topology.pages.LANES`)."""
    if priority is not None and priority not in LANES:
        raise ValueError(f"priority {priority!r}: one of {', '.join(LANES)}")


class PublishError(RuntimeError):
    """A document reference was not acknowledged by the broker."""


class DocumentPublisher:
    """Publishes DocumentRefs to the ingest topic (see module docstring)."""

    def __init__(self, s: Settings, producer: Producer | None = None):
        self.s = s
        self.store = ObjectStore(s)
        self.tracker = DeliveryTracker()
        self.producer = producer or Producer(producer_config(s))

    def __enter__(self) -> "DocumentPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def publish_ref(self, ref: DocumentRef) -> str:
        """Queue one reference; returns its document id.

        Raises:
            OcrstreamError: ``message_too_large`` when the encoded value is over
                ``max_message_bytes``.
        """
        value = encode(ref)
        if len(value) > self.s.max_message_bytes:
            raise OcrstreamError(ReasonCode.MESSAGE_TOO_LARGE,
                                 f"reference is {len(value)} bytes, limit {self.s.max_message_bytes}")
        while True:
            try:
                self.producer.produce(self.s.tenant_topic(self.s.tenant, "ingest"), value, ref.document_id, on_delivery=self.tracker.callback)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)
        return ref.document_id

    def publish_object(self, bucket: str, key: str, *, filename: str | None = None,
                       document_id: str | None = None, dpi: int | None = None, pages: str | None = None,
                       no_cache: bool = False, webhook_url: str | None = None, profile: str | None = None,
                       priority: str | None = None) -> str:
        """Publish a reference to an object that is already stored (stat'ed for ETag/size).

        The document id (unless given) is :func:`stable_document_id` of the object version
        and the options: the same version with the same options is the same document
        (idempotent), with another ``dpi`` or ``pages`` a new one.

        Args:
            pages: page ranges to OCR, 1-based inclusive (``"1-3,7"``); None = every page. Sent in
                canonical form; whether they exist in the document is the splitter's check (a
                ``failed`` result with ``invalid_page_range``).
            no_cache: OCR it even when the result cache holds its result (``DocumentRef.no_cache``;
                another document id than without it).
            webhook_url: completion callback (:mod:`ocrstream.webhooks`): the ``ocrstream webhooks``
                stage POSTs the result's signed summary there; must be one of the tenant's
                ``OCRSTREAM_WEBHOOK_ALLOWED_HOSTS``. None = no callback.
            profile: the model profile to OCR with (``OCRSTREAM_PROFILES``); None = the tenant's
                routing. Whether the tenant may use it is the splitter's check (a ``failed`` result
                with ``profile_not_allowed``).
            priority: the priority lane, ``interactive`` or ``batch`` (None: batch). Whether the
                tenant may use it is the service's configuration (``OCRSTREAM_TENANT_LANES``),
                checked by the splitter: a ``failed`` result with ``lane_not_allowed``. Not part
                of the document id.

        Raises:
            OcrstreamError: ``invalid_page_range`` (malformed ``pages``, checked before anything
                else), ``invalid_webhook_url``, ``webhook_not_allowed``, ``invalid_bucket``,
                ``invalid_key``, ``forbidden_source`` (outside ``OCRSTREAM_ALLOWED_SOURCES``),
                ``object_not_found``, ``storage_error``.
            ValueError: ``priority`` is not a lane.
        """
        _check_priority(priority)
        pages = None if pages is None else normalize_page_ranges(pages)
        if webhook_url is not None:
            check_webhook_url(self.s, webhook_url, self.s.tenant)
        key = check_source(self.s, bucket, key, self.s.tenant)  # fail here, not as a dead letter later
        info = self.store.stat(bucket, key)
        options = DocumentOptions(dpi=dpi)
        ref = DocumentRef(
            document_id=document_id or stable_document_id(bucket, key, info.etag, info.version_id, options,
                                                          self.s.tenant, pages, no_cache=no_cache,
                                                          webhook_url=webhook_url, profile=profile),
            source=ObjectRef(bucket=bucket, key=key, filename=filename or PurePosixPath(key).name,
                             etag=info.etag, version_id=info.version_id, size=info.size,
                             content_type=info.content_type),
            submitted_at=now_ms(), options=options, pages=pages, no_cache=no_cache or None, webhook_url=webhook_url,
            profile=profile, priority=priority,
        )
        return self.publish_ref(ref)

    def upload_and_publish(self, path: Path, *, dpi: int | None = None, pages: str | None = None,
                           no_cache: bool = False, webhook_url: str | None = None, profile: str | None = None,
                           priority: str | None = None) -> str:
        """Upload a local file under ``upload_prefix/<document_id>/<name>`` and publish it
        (``pages``, ``no_cache``, ``webhook_url``, ``profile``, ``priority``: as :meth:`publish_object`).

        Raises:
            OSError: the file cannot be read.
            OcrstreamError: ``invalid_page_range``, ``invalid_webhook_url``, ``webhook_not_allowed``
                (before the upload), ``storage_error``, ``message_too_large``.
            ValueError: ``priority`` is not a lane (before the upload).
        """
        pages = None if pages is None else normalize_page_ranges(pages)
        if webhook_url is not None:
            check_webhook_url(self.s, webhook_url, self.s.tenant)
        _check_priority(priority)
        document_id = uuid.uuid4().hex
        data = Path(path).read_bytes()
        key = f"{self.s.upload_prefix}{document_id}/{Path(path).name}"
        info = self.store.put_bytes(key, data, content_type_for(path.name))
        ref = DocumentRef(
            document_id=document_id,
            source=ObjectRef(bucket=info.bucket, key=key, filename=Path(path).name, etag=info.etag,
                             version_id=info.version_id, size=info.size, content_type=info.content_type),
            submitted_at=now_ms(), options=DocumentOptions(dpi=dpi), pages=pages, no_cache=no_cache or None,
            webhook_url=webhook_url, profile=profile, priority=priority,
        )
        return self.publish_ref(ref)

    def flush(self, timeout_s: float = 60.0, resend: int = 3) -> None:
        """Wait for every queued reference to be acknowledged; references whose delivery
        failed with a retriable error (e.g. acknowledged without an offset, see
        :class:`~ocrstream.kafka.DeliveryTracker`) are produced again, up to ``resend`` times.

        Raises:
            PublishError: some were not.
        """
        remaining = self.producer.flush(timeout_s)
        for _ in range(resend):
            if remaining or not self.tracker.failed or not all(e.retriable() for e in self.tracker.errors):
                break
            again = list(self.tracker.failed)
            self.tracker.reset()
            for msg in again:
                self.producer.produce(msg.topic(), msg.value(), msg.key(), on_delivery=self.tracker.callback)
            remaining = self.producer.flush(timeout_s)
        errors, self.tracker.errors = list(self.tracker.errors), []
        self.tracker.failed = []
        if remaining or errors:
            codes = {e.code() for e in errors}
            if KafkaError.MSG_SIZE_TOO_LARGE in codes:
                raise PublishError("a reference is larger than the ingest topic's max.message.bytes")
            raise PublishError(f"{remaining} reference(s) not delivered; errors: {[str(e) for e in errors[:3]]}")
