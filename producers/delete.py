"""``ocrstream delete DOCUMENT_ID...``: honour a deletion request.

For each document: its result is looked up in ``document-results`` (it names the source
object), the source object and its page slices (:mod:`ocrstream.slices`) are deleted from the
store (the referenced version; only inside
``OCRSTREAM_ALLOWED_SOURCES``, so the command cannot be used to delete anything else), and a
tombstone for its key is written to ``document-results`` (compaction then removes the result;
readers of the compacted view see it gone at once, see :mod:`producers.results`), and one to
``shadow-results`` for its shadow copy's result, if it had one (:mod:`topology.shadow`). A result that
names a result-cache entry (``cache_key``: it was stored in the cache, or served from it) gets
that entry tombstoned too, so its text is not served again (a later upload of the same bytes is
OCR'd again; splitters drop the entry once their index reads the tombstone, normally within a
second).

What stays, by design: the page results in ``page-results`` (a time-retention topic; their
text is gone after its retention), and the assembler's done marker (document id and status,
no text), which keeps a replayed page result from publishing the result again.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Producer

from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import DeliveryTracker, producer_config
from ocrstream.settings import Settings
from ocrstream.slices import slice_folder
from ocrstream.sources import check_source
from ocrstream.storage import ObjectStore
from topology import SHADOW_RESULTS, document_key

from .publish import PublishError
from .results import read_latest_results


@dataclass(frozen=True)
class Deleted:
    """What :func:`delete_documents` did for one document."""

    document_id: str
    found: bool  # a result existed (otherwise nothing was done)
    object_deleted: str | None  # ``s3://bucket/key`` or None (kept, or outside the allowed sources)


def delete_documents(s: Settings, document_ids: list[str], *, keep_object: bool = False,
                     timeout_s: float = 60.0) -> list[Deleted]:
    """Delete the source objects and results of ``document_ids`` (see module docstring).

    Raises:
        OcrstreamError: ``storage_error`` when an object cannot be deleted (nothing of that
            document was tombstoned: run the command again).
        PublishError: a tombstone was not acknowledged.
    """
    latest = read_latest_results(s, timeout_s=timeout_s)
    done: list[Deleted] = []
    tombstones, cache_tombstones = [], []
    store = ObjectStore(s)
    for doc_id in document_ids:
        result = latest.get(doc_id)
        if result is None:
            done.append(Deleted(doc_id, False, None))
            continue
        src, removed = result.source, None
        if not keep_object:
            try:
                check_source(s, src.bucket, src.key, s.tenant)
            except OcrstreamError as exc:
                if exc.code != ReasonCode.FORBIDDEN_SOURCE:
                    raise
            else:
                store.remove(src.bucket, src.key, src.version_id)  # before the tombstone: a retry finds the result
                removed = f"s3://{src.bucket}/{src.key}"
        for part in store.list(slice_folder(s, s.tenant, doc_id)):  # the splitter's page copies go too
            store.remove(part.bucket, part.key, part.version_id)
        tombstones.append(doc_id)
        if result.cache_key:
            cache_tombstones.append(result.cache_key)
        done.append(Deleted(doc_id, True, removed))
    if tombstones:
        tracker = DeliveryTracker()
        producer = Producer(producer_config(s))
        for key in cache_tombstones:  # the cached pages of these bytes are not served again
            producer.produce(s.topic("result-cache"), None, key, on_delivery=tracker.callback)
        for doc_id in tombstones:  # same key, same default partitioner as the assembler: same partition
            producer.produce(s.tenant_topic(s.tenant, "document-results"), None, doc_id, on_delivery=tracker.callback)
            # a shadow copy's result holds the document's text too (topology.shadow): it goes as well
            producer.produce(s.topic(SHADOW_RESULTS), None, document_key(s.tenant, doc_id),
                             on_delivery=tracker.callback)
        if producer.flush(timeout_s) or tracker.errors:
            raise PublishError(f"tombstones not acknowledged: {[str(e) for e in tracker.errors[:3]]}")
    return done
