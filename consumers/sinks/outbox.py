"""The outbox sink (``ocrstream sink outbox``): document results as files next to where people
dropped their documents.

A consumer group (``<group_prefix>outbox``) on the document-results topic. For each result of a
drop-folder document (``OCRSTREAM_OUTBOX_SCOPE=all``: of every document) it writes, under
``OCRSTREAM_OUTBOX_PREFIX`` and mirroring the path under the drop folder
(``inbox/a/scan.pdf`` -> ``outbox/a/scan.pdf.<ext>``; other documents:
``outbox/documents/<document_id>/<filename>.<ext>``):

- ``.json`` the document result, ``.txt`` its text (pages separated by form feeds),
  ``.hocr`` (hOCR 1.2), ``.alto.xml`` (ALTO 4.4) and ``.pdf`` (searchable PDF: the source's
  pages with an invisible text layer, :mod:`ocrstream.outputs.pdf`), as
  ``OCRSTREAM_OUTBOX_FORMATS`` lists;
- for a failed document ``.json`` and ``.error.json`` (document id, reason code, message, and
  the failed pages' codes); a later successful result of the same object removes the
  ``.error.json``.

In a versioned bucket each object version gets its own set: ``scan.pdf@<version_id>.<ext>``.

Delivery: at-least-once, one record at a time: the files are written, then the record's offset
is committed (:meth:`StageRuntime.publish` with no outputs). A crash in between replays the
record, and a replay writes the same keys again (idempotent). A record that is not a document
result becomes a dead letter and the partition goes on. A tombstone (``ocrstream delete``, a
deletion request) removes the document's files: their keys are recorded per document under
``<outbox prefix>.ocrstream/index/<document_id>.json`` before the files are written. When the object store is away, the record is not skipped: the partition is rewound to
the committed offset and tried again after a backoff (``storage_error``, transient).

The searchable PDF needs the source object: it is read (within ``OCRSTREAM_ALLOWED_SOURCES``,
at the result's ETag/version); when it is gone or was replaced, the other files are still
written and ``ocrstream_outbox_pdf_skipped_total{reason}`` counts it.

``OCRSTREAM_OUTBOX_INBOX_ACTION`` then tags the inbox object (``ocrstream-status``,
``ocrstream-document-id``) or moves it under ``OCRSTREAM_OUTBOX_DONE_PREFIX`` (a server-side
copy, then a delete), after its outputs are written.
"""

from __future__ import annotations

import logging
import time

import orjson
from confluent_kafka import Message, TopicPartition

from ocrstream import metrics as m
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.outputs import document_text, searchable_pdf, to_alto, to_hocr
from ocrstream.settings import Settings
from ocrstream.sources import check_source
from ocrstream.storage import ObjectStore
from ocrstream.streaming import Output, StageRuntime, StopFlag, retry_transient, run_stage
from ocrstream.streaming.loop import RecordContext
from schemas import DocumentResult, ObjectRef, decode, encode

log = logging.getLogger(__name__)

STAGE = "outbox"
SUFFIX = {"json": ".json", "txt": ".txt", "hocr": ".hocr", "alto": ".alto.xml", "pdf": ".pdf"}
CONTENT_TYPES = {"json": "application/json", "txt": "text/plain; charset=utf-8",
                 "hocr": "text/html; charset=utf-8", "alto": "application/xml", "pdf": "application/pdf"}


def outbox_base(s: Settings, source: ObjectRef | None, document_id: str) -> str | None:
    """The outbox key of a document's files, without the extension; None when the document is
    outside ``OCRSTREAM_OUTBOX_SCOPE`` (or has no source).

    ``inbox/a/scan.pdf`` -> ``outbox/a/scan.pdf``; in a versioned bucket ``outbox/a/scan.pdf@<version>``;
    other documents (scope ``all``) -> ``outbox/documents/<document_id>/<filename>``.
    """
    if source is None:
        return None
    if source.bucket == s.bucket and source.key.startswith(s.inbox_prefix) and len(source.key) > len(s.inbox_prefix):
        base = s.outbox_prefix + source.key[len(s.inbox_prefix):]
    elif s.outbox_scope == "all":
        name = source.filename.replace("/", "_")  # a file name, not a path
        base = f"{s.outbox_prefix}documents/{document_id}/{name}"
    else:
        return None
    return f"{base}@{source.version_id}" if source.version_id else base


def error_report(result: DocumentResult) -> bytes:
    """``.error.json``: why a document failed (its reason code, and each failed page's)."""
    return orjson.dumps({
        "document_id": result.document_id,
        "source": result.source.model_dump(mode="json") if result.source else None,
        "error": result.error.model_dump(mode="json") if result.error else None,
        "failed_pages": [{"page_number": p.page_number, "error": p.error.model_dump(mode="json") if p.error else None}
                         for p in result.pages if p.status == "failed"],
        "completed_at": result.completed_at,
    }, option=orjson.OPT_INDENT_2)


class OutboxSink:
    """The outbox sink stage (see module docstring).

    Args:
        s: settings.
        stop: stop flag (default: SIGTERM/SIGINT handlers).
    """

    def __init__(self, s: Settings, stop: StopFlag | None = None):
        self.s = s
        self.formats = [f for f in s.outbox_formats.split(",") if f]
        self.store = ObjectStore(s)
        self.rt = StageRuntime(s, STAGE, [s.topic("document-results")], stop=stop, results_topic=None)
        self.stop = self.rt.stop

    def run(self) -> None:
        """Consume, write, commit, until stopped.

        Raises:
            FatalKafkaError: see :mod:`ocrstream.streaming.loop`.
        """
        self.rt.start()
        backoff = 0.5
        try:
            while not self.stop.is_set():
                msg = self.rt.poll(0.5)
                if msg is None:
                    continue
                tp = TopicPartition(msg.topic(), msg.partition())
                try:
                    outputs = self.rt.guard(msg, self.handle, reraise_transient=True)
                except OcrstreamError as exc:
                    # The store is away (transient, retries spent): this record is not the problem, so
                    # it must not become a dead letter. Read it again after a pause.
                    log.warning("outbox: %s; retrying %s[%d]@%d in %.0fs", exc, msg.topic(), msg.partition(),
                                msg.offset(), backoff)
                    self.rt.rewind([tp])
                    self.stop.event.wait(backoff)
                    backoff = min(30.0, backoff * 2)
                    continue
                backoff = 0.5
                self.rt.publish(outputs, [TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)])
        finally:
            self.rt.close()

    def handle(self, msg: Message, ctx: RecordContext) -> list[Output]:
        """Write the files of one document result; no Kafka outputs.

        Raises:
            OcrstreamError: ``invalid_json``, ``schema_violation`` (the record; a dead letter), or a
                transient ``storage_error`` (the store; the record is read again).
        """
        if msg.value() is None:  # a deletion request's tombstone: its files go too
            self.forget((msg.key() or b"").decode(errors="replace"))
            return []
        result = decode(msg.value(), DocumentResult)
        ctx.document_id = result.document_id
        base = outbox_base(self.s, result.source, result.document_id)
        if base is None:
            m.OUTBOX_DOCUMENTS.labels("skipped").inc()
            return []
        t0 = time.perf_counter()
        self.write(base, result)
        self._inbox_action(result)
        m.OUTBOX_DOCUMENTS.labels(result.status).inc()
        log.info("outbox: %s (%s) -> %s.* in %.0f ms", result.document_id, result.status, base,
                 (time.perf_counter() - t0) * 1000)
        return []

    def write(self, base: str, result: DocumentResult) -> list[str]:
        """Write the document's files under ``base``; returns the keys written.

        Raises:
            OcrstreamError: ``storage_error`` (after retries).
        """
        files: dict[str, tuple[str, bytes]] = {}  # key -> (format, body)
        if "json" in self.formats or result.status == "failed":
            files[base + ".json"] = ("json", encode(result))
        if result.status == "failed":
            files[base + ".error.json"] = ("error", error_report(result))
        else:
            for fmt in self.formats:
                body = self._render(fmt, result)
                if body is not None:
                    files[base + SUFFIX[fmt]] = (fmt, body)
        # The index first: a crash after it leaves files a deletion request can still find.
        index = orjson.dumps({"document_id": result.document_id, "keys": sorted(files)})
        retry_transient(lambda: self.store.put_bytes(self.index_key(result.document_id), index, "application/json"),
                        stop=self.stop.event)
        for key, (fmt, body) in files.items():
            retry_transient(lambda: self.store.put_bytes(key, body, CONTENT_TYPES.get(fmt, CONTENT_TYPES["json"])),
                            stop=self.stop.event)
            m.OUTBOX_FILES.labels(fmt).inc()
        if result.status == "succeeded":  # a replayed dead letter that now succeeded: the old report goes
            retry_transient(lambda: self.store.remove(self.s.bucket, base + ".error.json"), stop=self.stop.event)
        return list(files)

    def index_key(self, document_id: str) -> str:
        """Where the keys of a document's files are recorded (for deletion requests, whose
        tombstone carries only the document id)."""
        return f"{self.s.outbox_prefix}.ocrstream/index/{document_id}.json"

    def forget(self, document_id: str) -> int:
        """Delete the files of a deleted document (``ocrstream delete``); returns how many.

        Raises:
            OcrstreamError: a transient ``storage_error`` (the record is read again).
        """
        if not document_id or "/" in document_id:
            return 0  # not a key the sink wrote (tenants' keys have a slash; their results are not ours)
        index_key = self.index_key(document_id)
        try:
            index = orjson.loads(retry_transient(lambda: self.store.get_bytes(self.s.bucket, index_key, 1 << 20),
                                                 stop=self.stop.event))
        except OcrstreamError as exc:
            if exc.transient:
                raise
            return 0  # no files of this document (outside the scope, or already forgotten)
        except orjson.JSONDecodeError:
            index = {"keys": []}
        keys = [k for k in index.get("keys", []) if isinstance(k, str) and k.startswith(self.s.outbox_prefix)]
        for key in keys:
            retry_transient(lambda: self.store.remove(self.s.bucket, key), stop=self.stop.event)
        retry_transient(lambda: self.store.remove(self.s.bucket, index_key), stop=self.stop.event)
        m.OUTBOX_DOCUMENTS.labels("deleted").inc()
        log.info("outbox: %s deleted: %d files removed", document_id, len(keys))
        return len(keys)

    def _render(self, fmt: str, result: DocumentResult) -> bytes | None:
        if fmt == "json":
            return encode(result)
        if fmt == "txt":
            return document_text(result).encode()
        if fmt == "hocr":
            return to_hocr(result).encode()
        if fmt == "alto":
            return to_alto(result).encode()
        return self._pdf(result)

    def _pdf(self, result: DocumentResult) -> bytes | None:
        src = result.source
        try:
            key = check_source(self.s, src.bucket, src.key)
            data = retry_transient(lambda: self.store.get_bytes(src.bucket, key, self.s.max_object_bytes,
                                                                src.version_id, etag=src.etag), stop=self.stop.event)
            return searchable_pdf(result, data, fallback_dpi=self.s.render_dpi, max_page_pixels=self.s.max_page_pixels)
        except OcrstreamError as exc:
            if exc.transient:
                raise
            # The source is gone, replaced or unreadable now: the text files still serve the user.
            log.warning("outbox: no searchable PDF for %s: %s", result.document_id, exc)
            m.OUTBOX_PDF_SKIPPED.labels(exc.code).inc()
            return None

    def _inbox_action(self, result: DocumentResult) -> None:
        src, action = result.source, self.s.outbox_inbox_action
        if action == "none" or src.bucket != self.s.bucket or not src.key.startswith(self.s.inbox_prefix):
            return
        try:
            if action == "tag":
                tags = {"ocrstream-status": result.status, "ocrstream-document-id": result.document_id[:256]}
                retry_transient(lambda: self.store.set_tags(src.bucket, src.key, tags, src.version_id),
                                stop=self.stop.event)
            else:
                done = self.s.outbox_done_prefix + src.key[len(self.s.inbox_prefix):]
                retry_transient(lambda: self.store.copy(src.bucket, src.key, done, src.version_id),
                                stop=self.stop.event)
                retry_transient(lambda: self.store.remove(src.bucket, src.key), stop=self.stop.event)
        except OcrstreamError as exc:
            if exc.transient:
                raise
            if exc.code != ReasonCode.OBJECT_NOT_FOUND:  # already moved or deleted: a replay, nothing to do
                log.warning("outbox: inbox %s of %s failed: %s", action, src.key, exc)


def run_outbox_sink(s: Settings, stop: StopFlag | None = None) -> int:
    """Run the outbox sink until SIGTERM/SIGINT; 0 after a graceful stop, 2 after a fatal Kafka error."""
    return run_stage(lambda: OutboxSink(s, stop=stop))
