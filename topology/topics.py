"""The topics, defined once.

Keys (why they are what they are):
- ``ingest``: key ``document_id``.
- ``pages``: key ``document_id/page_number``; the splitter sends each page to the worker group
  member with the least expected work so far (``consumers.splitter.PagePlacement``), so the pages of one document
  are OCR'd by different consumers in parallel, in even shares; each task carries its document's
  placement (``PageTask.placement``: page *n* on ``placement[(n - 1) % len]``). Without the
  group's assignment (no worker yet): ``(crc32(document_id) + n - 1) mod partitions``.
- ``page-results``: key ``document_id``, so every page of a document reaches the
  same assembler partition (its state is partitioned by document).
- ``document-results``: key ``document_id``, compacted: the last value per key is
  the document's result, and a replayed result overwrites an identical one.
- ``dead-letters``: key of the original record.
- ``metrics``: key ``worker_id``.
- ``object-events``: written by the object store (MinIO keys it ``bucket/object``); it must
  exist before the store's first event, because MinIO's Kafka target does not create topics.
- ``watch-state``: the drop-folder watcher's checkpoint, key ``bucket/key[?versionId=v]``.
- ``assembler-state``: the assembler's changelog, partition *p* = the state of ``page-results``
  partition *p* (so it has exactly as many partitions). ``compact`` only, no time retention:
  an open document is never dropped by retention; the assembler itself tombstones pages of
  finished documents and, after the page-results retention, the done markers.
- ``result-cache``: key the cache key (``ocrstream.result_cache``: SHA-256 over tenant, content
  hash, DPI, pages and the workers' output fingerprint), value a succeeded document's result
  (``CachedResult``), written by the assembler, read by the splitter by assignment.
  ``compact,delete``: the last entry per key, for ``OCRSTREAM_RESULT_CACHE_TTL_H``.
- ``page-attempts``: the OCR worker's in-flight marks (poison-page accounting), key
  ``<pages partition>/<offset>``, partition = the page task's ``pages`` partition.
- ``shadow-results``: document results of shadow copies (:mod:`topology.shadow`), key = the real
  document's key (``<tenant>/<document_id>`` or ``document_id``); ``compact,delete`` with the
  pipeline retention: comparison data, read by ``ocrstream compare``, never by users.
- ``profile.<p>.pages`` (and each lane's): page tasks of model profile ``<p>``, configured like
  ``pages`` (:mod:`topology.pages`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from .pages import DEFAULT_PROFILE, LANES, page_topic
from .shadow import SHADOW_RESULTS
from .tenants import TENANT_TOPICS, tenant_topic

DAY_MS = 24 * 3600 * 1000

PRODUCTION_REPLICATION_FACTOR = 3
"""Copies of every partition in production: a cluster of 3+ brokers loses any one broker (a
crash, a rolling restart) with no record lost and writes going on."""


PAGES_PARTITIONS = 12
"""Default partitions of ``pages`` (and ``page-attempts``): the most OCR workers one group can
use (a 13th member gets no partition). Raise it with ``OCRSTREAM_PAGES_PARTITIONS`` to what
``python bench/capacity.py model`` gives for the load (README, "Scaling"); on an existing
``pages`` topic partitions can be added later without harm (pages are independent)."""

RESULTS_PARTITIONS = 6
"""Partitions of ``page-results`` (= ``assembler-state``, partitioned alike) and
``document-results``. Unlike ``pages`` these cannot be raised later without harm: an open
document's page results would move to another assembler partition than its state, and a
document's later result to another partition than its earlier one (compaction keeps both).
The capacity model's measured assembler cost puts 6 assemblers far above the pages/s the worker
fleets here reach (README, "Scaling")."""


def min_insync_for(replication_factor: int) -> int:
    """``min.insync.replicas`` for a replication factor: 2 from 3 copies up (an ``acks=all``
    write is on two brokers before it is acknowledged, and one broker may be down), else 1.

    With 3 copies and min ISR 2 a second broker down stops writes (producers retry, then fail
    with ``NOT_ENOUGH_REPLICAS``) instead of acknowledging records held by one broker only.
    """
    return 2 if replication_factor >= 3 else 1


@dataclass(frozen=True)
class Retention:
    """How long records stay (ms). ``pipeline_ms``: ingest, pages, page-results, object-events,
    page-attempts (the page text in Kafka); ``dead_letters_ms``; ``results_ms``: None keeps
    document results until deleted (``ocrstream delete``), a value adds time retention to the
    compaction (``compact,delete``); ``result_cache_ms``: the result cache's TTL
    (``OCRSTREAM_RESULT_CACHE_TTL_H``)."""

    pipeline_ms: int = 7 * DAY_MS
    dead_letters_ms: int = 30 * DAY_MS
    results_ms: int | None = None
    result_cache_ms: int = 7 * DAY_MS


@dataclass(frozen=True)
class TopicSpec:
    """One topic: logical name (without prefix), partitions, replication and configs."""

    name: str
    partitions: int
    replication_factor: int = PRODUCTION_REPLICATION_FACTOR
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""


def topic_specs(replication_factor: int = PRODUCTION_REPLICATION_FACTOR, partitions_scale: int = 1,
                retention: Retention = Retention(), tenants: tuple[str, ...] = (),
                profiles: tuple[str, ...] = (), pages_partitions: int = PAGES_PARTITIONS) -> list[TopicSpec]:
    """The project's topics.

    Args:
        pages_partitions: partitions of ``pages`` and ``page-attempts`` (``OCRSTREAM_PAGES_PARTITIONS``):
            the largest OCR worker group that gets work.
        replication_factor: copies of each partition; 3 (the production default, with
            ``min.insync.replicas`` 2, :func:`min_insync_for`). ``apply_topics`` lowers it to 1
            on a single-broker cluster (the local stack) and says so.
        partitions_scale: multiplies partition counts (worker replicas <= ``pages`` partitions).
        retention: record retention (``OCRSTREAM_*_RETENTION_H`` settings, see ``Settings.retention``).
        tenants: tenant names (``OCRSTREAM_TENANTS``): each gets its own ``tenant.<name>.ingest`` and
            ``tenant.<name>.document-results``, configured like the default tenant's (see
            :mod:`topology.tenants`).
        profiles: model profile names besides ``default`` (``OCRSTREAM_PROFILES``): each gets its page
            topics, one per lane, configured like ``pages`` (see :mod:`topology.pages`).
    """
    specs = _shared_specs(replication_factor, partitions_scale, retention, pages_partitions)
    by_name = {t.name: t for t in specs}
    for tenant in tenants:
        specs += [TopicSpec(tenant_topic(tenant, name), by_name[name].partitions, replication_factor,
                            dict(by_name[name].config), f"{by_name[name].description}, tenant {tenant}")
                  for name in TENANT_TOPICS]
    pages = by_name["pages"]
    for profile in (DEFAULT_PROFILE, *(p for p in profiles if p != DEFAULT_PROFILE)):
        specs += [TopicSpec(page_topic(profile, lane), pages.partitions, replication_factor, dict(pages.config),
                            f"page work items (PageTask), profile {profile}, lane {lane}")
                  for lane in LANES if page_topic(profile, lane) != "pages"]
    return specs


def _shared_specs(replication_factor: int, partitions_scale: int, retention: Retention,
                  pages_partitions: int = PAGES_PARTITIONS) -> list[TopicSpec]:
    rf = replication_factor
    min_isr = str(min_insync_for(rf))
    common = {"min.insync.replicas": min_isr}
    keep = str(retention.pipeline_ms)
    results = ({"cleanup.policy": "compact"} if retention.results_ms is None
               else {"cleanup.policy": "compact,delete", "retention.ms": str(retention.results_ms)})
    return [
        TopicSpec("ingest", 6 * partitions_scale, rf,
                  {**common, "retention.ms": keep, "max.message.bytes": "1048576"},
                  "document references (DocumentRef)"),
        TopicSpec("pages", pages_partitions * partitions_scale, rf,
                  {**common, "retention.ms": keep, "max.message.bytes": "1048576"},
                  "page work items (PageTask)"),
        TopicSpec("page-results", RESULTS_PARTITIONS * partitions_scale, rf,
                  {**common, "retention.ms": keep, "max.message.bytes": "8388608"},
                  "detections per page (PageResult)"),
        TopicSpec("document-results", RESULTS_PARTITIONS * partitions_scale, rf,
                  {**common, **results, "max.message.bytes": "33554432",
                   "min.compaction.lag.ms": "60000", "segment.ms": str(DAY_MS)},
                  "one result per document (DocumentResult), compacted"),
        TopicSpec("metrics", 1, rf,
                  {**common, "retention.ms": str(3 * DAY_MS)},
                  "worker and GPU samples (WorkerMetrics)"),
        TopicSpec("dead-letters", 3, rf,
                  {**common, "retention.ms": str(retention.dead_letters_ms), "max.message.bytes": "2097152"},
                  "records a stage could not process (DeadLetter)"),
        TopicSpec("object-events", 3 * partitions_scale, rf,
                  {**common, "retention.ms": keep},
                  "S3 bucket notifications for the drop folder (MinIO Kafka target), read by `watch` in events mode"),
        TopicSpec("watch-state", 1, rf,
                  {**common, "cleanup.policy": "compact"},
                  "drop-folder checkpoint: object key -> last published ETag/version"),
        TopicSpec("assembler-state", RESULTS_PARTITIONS * partitions_scale, rf,
                  {**common, "cleanup.policy": "compact", "max.message.bytes": str(8388608 + 1024 * 1024),
                   "segment.ms": str(DAY_MS)},
                  "assembler changelog: page results of open documents, done markers (partitioned like page-results)"),
        # Retention deletes whole segments once their newest record is past retention.ms, so a
        # segment never spans more than a day (or the TTL): entries are gone at most that long after
        # their TTL. The splitter checks each entry's timestamp against the TTL itself.
        TopicSpec("result-cache", 6 * partitions_scale, rf,
                  {**common, "cleanup.policy": "compact,delete", "retention.ms": str(retention.result_cache_ms),
                   "segment.ms": str(min(retention.result_cache_ms, DAY_MS)), "max.message.bytes": "33554432"},
                  "content-hash result cache: cache key -> a succeeded document's result (CachedResult)"),
        TopicSpec("page-attempts", pages_partitions * partitions_scale, rf,
                  {**common, "cleanup.policy": "compact,delete", "retention.ms": keep,
                   "segment.ms": str(DAY_MS)},
                  "OCR worker in-flight marks: engine attempts per page task (partitioned like pages)"),
        TopicSpec(SHADOW_RESULTS, 6 * partitions_scale, rf,
                  {**common, "cleanup.policy": "compact,delete", "retention.ms": keep, "max.message.bytes": "33554432",
                   "min.compaction.lag.ms": "60000", "segment.ms": str(DAY_MS)},
                  "document results of shadow copies (DocumentResult, shadow: true), never read by users"),
    ]


def placed_partition(placement: list[int], page_number: int) -> int:
    """Partition of ``pages`` for page ``page_number`` (1-based) of a document whose page tasks
    carry ``placement`` (``PageTask.placement``): ``placement[(page_number - 1) % len(placement)]``."""
    return placement[(page_number - 1) % len(placement)]


def page_partition(document_id: str, page_number: int, partitions: int) -> int:
    """Partition of ``pages`` for page ``page_number`` (1-based) of ``document_id``:
    ``(crc32(document_id) + page_number - 1) mod partitions`` (consecutive per document)."""
    return (zlib.crc32(document_id.encode()) + page_number - 1) % partitions
