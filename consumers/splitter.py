"""Splitter: document reference (ingest topic) -> page work items (pages topic).

For each DocumentRef the splitter downloads the object once, identifies it
from its bytes and counts its pages (PDF via PyMuPDF, images via Pillow),
enforcing the size/page/pixel limits, then publishes one PageTask per page.
Page tasks reference the object in storage; workers render their own page, so
no pixels travel through Kafka.

Placement: each page goes to the worker group member with the least expected work
placed so far (the splitter reads the group's assignment and weighs pages, see
:class:`PagePlacement`), so every consumer of the group gets an even share of
every run of pages. Hashing the
``document_id/page`` key would spread them only at random: measured on 5 scanned
documents (33 pages + warm-up) with 2 workers, one worker got 28 pages and the
other 17, and the run lasted as long as the busier one needed.

Page ranges (``DocumentRef.pages``, :mod:`ocrstream.page_ranges`): only the requested pages get a
page task; their ``page_count`` is the number of requested pages and ``page_range`` the canonical
ranges, so the assembler completes the document when those pages are in. A malformed range is
refused before the object is read, one beyond the document's pages once they are counted
(``invalid_page_range``).

Result cache (:mod:`ocrstream.result_cache`, :mod:`consumers.result_cache`; on unless
``OCRSTREAM_RESULT_CACHE_TTL_H=0``): the downloaded bytes are hashed once; a document whose
tenant, bytes, DPI, pages and the live workers' output fingerprint match a cached succeeded
result gets that result published at once (``cache_hit``), without page tasks, OCR or assembly. Otherwise every
page task carries the splitter's half of the key (``cache_request``) so that the assembler can
store the result. A reference with ``no_cache`` skips the lookup (and its result is stored).
The lookup comes after every check of the document (limits, page ranges), so a hit is never
given to a document the pipeline would refuse.
Completion webhooks (``DocumentRef.webhook_url``, :mod:`ocrstream.webhooks`): the URL must name a host
of the tenant's allowed hosts (the tenant of the ingest topic), checked before the object is read
(``webhook_not_allowed`` / ``invalid_webhook_url``); the page tasks carry it on, and so does a
``failed`` result of a document refused after the check, so its failure is called back too.
Model profiles (``OCRSTREAM_PROFILES``, :mod:`consumers.routing`): each document goes to the page
topic of the profile its tenant's route gives it (``profile_not_allowed`` when it names one it
may not have, before the object is read), rendered at that profile's DPI unless the reference
sets one, and placed over that profile's worker group. A sampled share also gets a *shadow copy*:
the same page tasks, marked ``shadow`` and keyed ``<document key>~shadow``, on the shadow
profile's page topic (:mod:`topology.shadow`; always its batch lane), published with the real ones
(both or neither).
Priority lanes (:mod:`topology.pages`, :func:`choose_lane`): a document's page tasks go to the
page topic of its profile and lane, ``pages`` (``batch``, the default) or ``pages-interactive``,
which the workers drain first. The lane is the reference's ``priority``, checked against what
its tenant may use (``OCRSTREAM_TENANT_LANES``; the tenant is the ingest topic's, never the
record's word): another lane fails the document with ``lane_not_allowed`` before the object is read.
Each page topic has its own placement, over the members of its own worker group.

Anything wrong with a document becomes a dead-letter record plus a ``failed``
document result (when its id is known); the partition never stops. That policy, the
commit and the Kafka error handling are the stage runtime's
(:mod:`ocrstream.streaming.loop`); this module is only the handling of one record.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import ConsumerGroupState, KafkaException, Message, Producer, TopicPartition

from ocrstream import metrics as m
from ocrstream import result_cache as rc
from ocrstream.documents import inspect, open_pdf, page_weights
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import make_admin
from ocrstream.lanes import allowed_lane
from ocrstream.page_ranges import format_page_ranges, parse_page_ranges, select_pages
from ocrstream.profiles import profile_settings
from ocrstream.settings import Settings
from ocrstream.slices import page_pdf, slice_key, wants_slices
from ocrstream.sources import check_source
from ocrstream.storage import ObjectStore
from ocrstream.streaming import Output, StageRuntime, StopFlag, retry_transient, run_stage
from ocrstream.streaming.loop import RecordContext
from ocrstream.webhooks import check_webhook_url
from schemas import DocumentRef, ObjectRef, PageTask, decode, encode
from topology import (DEFAULT_LANE, DEFAULT_PROFILE, document_key, page_partition, placed_partition, shadow_key,
                      worker_group)

from .routing import choose_profile

from .result_cache import ResultCacheIndex, hit_result

log = logging.getLogger(__name__)

STAGE = "splitter"


class PagePlacement:
    """Where the page tasks of each document go: spread over the worker group's members by weight.

    Kafka hands out work in advance (a partition's records go to its one consumer), so a burst
    of pages is only finished as soon as the busiest member is done. Every ``ttl_s`` the splitter
    describes the worker group (``DescribeConsumerGroups``) and learns each member's ``pages``
    partitions (members by member id, partitions ascending). Each page then goes to the member
    with the least weight placed so far (ties: the next member in turn), onto that member's
    partitions in turn; a page's weight is its expected OCR cost relative to the other pages
    of its document (:func:`ocrstream.documents.page_weights`; 1.0 when unknown). Loads carry
    over from document to document, so small documents even out too. Why not simpler: hashing
    the key spreads pages at random (5 scanned documents, 2 workers: 28 vs 17 pages), and
    consecutive partitions per document follow the assignor's layout, and cooperative-sticky
    hands out *ranges* (2 workers on 12 partitions: 0-5 and 6-11): 18 pages of 4 scanned
    documents went 12 to 6. Documents with more pages than there are partitions are dealt
    in turn instead (their placement stays short, see below; long documents even out anyway).

    With no assignment to read (no worker has joined yet, or the group cannot be described),
    pages go to consecutive partitions from ``crc32(document_id) mod P``, the former placement.
    Each task records its document's placement (:attr:`schemas.PageTask.placement`, at most P
    entries) because it cannot be recomputed later: the assembler reads it to know which
    partitions still hold a document's missing pages. A replayed ingest record may be placed
    elsewhere than the first time; duplicates are harmless (results are per page).

    Args:
        producer: any client with ``list_topics`` (the splitter's producer).
        topic: the pages topic.
        admin: an admin client to describe ``group`` with (None: never describe).
        group: the worker group.
        ttl_s: seconds between metadata reads and group descriptions.
    """

    def __init__(self, producer: Producer, topic: str, admin=None, group: str = "", ttl_s: float = 10.0):
        self.producer, self.topic, self.admin, self.group, self.ttl_s = producer, topic, admin, group, ttl_s
        self._count: int | None = None
        self._read_at = float("-inf")
        self._members: list[list[int]] = []  # each member's pages partitions
        self._described_at = float("-inf")
        self._loads: list[float] = []
        self._turns: list[int] = []  # per member: its next partition
        self._next = 0  # the member that wins the next tie
        self._long = 0  # where the next long document starts in the interleaved order
        self._describe_failed = False

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

    def members(self) -> list[list[int]]:
        """Each worker group member's ``pages`` partitions (ascending), members by member id;
        [] when unknown."""
        if self.admin is None or time.monotonic() - self._described_at < self.ttl_s:
            return self._members
        self._described_at = time.monotonic()
        try:
            desc = self.admin.describe_consumer_groups([self.group], request_timeout=5)[self.group].result(timeout=5)
        except Exception as exc:  # KafkaException, or no DESCRIBE right on the group
            if not self._describe_failed:  # once per outage, not every ttl_s
                log.warning("worker group %s not described (%s): placing pages on the last layout known "
                            "(none: consecutive partitions); the splitter needs DESCRIBE on the group",
                            self.group, exc)
            self._describe_failed = True
            return self._members
        self._describe_failed = False
        if desc.state not in (ConsumerGroupState.STABLE, ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
            return self._members  # mid-rebalance: members may show partial assignments
        owned = [sorted(tp.partition for tp in (m.assignment.topic_partitions if m.assignment else [])
                        if tp.topic == self.topic)
                 for m in sorted(desc.members, key=lambda m: m.member_id)]
        owned = [parts for parts in owned if parts]
        if owned != self._members:  # a rebalance: loads placed on the old layout mean nothing now
            self._members, self._loads, self._turns, self._next = owned, [0.0] * len(owned), [0] * len(owned), 0
        return self._members

    def place(self, document_id: str, weights: list[float]) -> list[int] | None:
        """The placement of a document whose pages have ``weights`` (one per page): page n on
        ``placement[(n - 1) % len(placement)]``; None when the partition count is unknown (hash
        the keys)."""
        members = self.members()
        partitions = sum(map(len, members))
        if members and len(weights) <= partitions:
            placement = []
            for weight in weights:
                k = min(range(len(members)), key=lambda i: (self._loads[i], (i - self._next) % len(members)))
                self._loads[k] += weight
                self._next = (k + 1) % len(members)
                placement.append(members[k][self._turns[k] % len(members[k])])
                self._turns[k] += 1
            low = min(self._loads)
            self._loads = [load - low for load in self._loads]
            return placement
        if members:  # a long document: in turn over the members' partitions interleaved
            order = [parts[i] for i in range(max(map(len, members))) for parts in members if i < len(parts)]
            start, self._long = self._long % len(order), self._long + len(weights)  # not always member 1 first
            return order[start:] + order[:start]
        count = self.partitions()
        if not count:
            return None
        return [page_partition(document_id, n, count) for n in range(1, min(len(weights), count) + 1)]


def choose_lane(s: Settings, tenant: str | None, ref: DocumentRef) -> str:
    """The priority lane of ``ref``'s page tasks: its ``priority``, else ``batch``.

    Raises:
        OcrstreamError: ``lane_not_allowed``: ``tenant`` (the ingest topic's; None: the default
            tenant) may not use that lane (``OCRSTREAM_TENANT_LANES``, :meth:`Settings.lanes_of`).
    """
    return allowed_lane(s, tenant, ref.priority)


class Splitter:
    """The splitter stage: one ingest record at a time, on the shared stage runtime.

    Args:
        s: settings.
        stop: stop flag (default: SIGTERM/SIGINT handlers).

    Raises:
        FatalKafkaError: the transactional producer could not be initialised.
    """

    def __init__(self, s: Settings, stop: StopFlag | None = None):
        self.s = s
        self.store = ObjectStore(s)
        # every tenant's ingest topic: the tenant of a record is the topic it came from
        self.rt = StageRuntime(s, STAGE, s.ingest_topics(), stop=stop)
        self.stop = self.rt.stop
        self.cache = ResultCacheIndex(s).start() if rc.enabled(s) else None
        self.admin = make_admin(s)
        self.placements: dict[tuple[str, str], PagePlacement] = {}  # (page topic, worker group) -> its placement
        self.placement = self.placement_of(DEFAULT_PROFILE, DEFAULT_LANE)  # `pages`, the default's
        self._profiles: dict[str, Settings] = {}

    def placement_of(self, profile: str, lane: str) -> PagePlacement:
        """The :class:`PagePlacement` of the page topic of ``profile`` and ``lane`` over the worker
        group that reads it (:func:`topology.pages.worker_group`), made on first use."""
        s = self.s
        topic, group = s.page_topic(profile, lane), s.group(worker_group(profile, lane))
        if (topic, group) not in self.placements:
            self.placements[(topic, group)] = PagePlacement(self.rt.delivery.producer, topic, self.admin, group)
        return self.placements[(topic, group)]

    def profile_dpi(self, profile: str) -> int:
        """The render DPI of ``profile`` (``OCRSTREAM_PROFILES``, else ``OCRSTREAM_RENDER_DPI``)."""
        if profile not in self._profiles:
            self._profiles[profile] = profile_settings(self.s, profile)
        return self._profiles[profile].render_dpi

    def handle(self, msg: Message, ctx: RecordContext) -> list[Output]:
        """Page tasks for one ingest record.

        Raises:
            OcrstreamError: the record or its document is refused (reason code); the runtime
                turns it (and any other exception) into a dead letter and a failed result.
        """
        s = self.s
        tenant = s.tenant_of(msg.topic())  # from where the record came, never from its value
        ctx.results_topic = s.tenant_topic(tenant, "document-results")
        size = len(msg.value() or b"")
        if size > s.max_message_bytes:
            raise OcrstreamError(ReasonCode.MESSAGE_TOO_LARGE, f"value is {size} bytes, limit {s.max_message_bytes}")
        ref = decode(msg.value(), DocumentRef)
        ctx.document_id, ctx.source, ctx.submitted_at = ref.document_id, ref.source, ref.submitted_at
        if ref.webhook_url is not None:
            # The callback is a request from the service's network position: the tenant's allowed hosts
            # only, checked before anything is read. Once checked, a failure below is called back too.
            ctx.webhook_url = check_webhook_url(s, ref.webhook_url, tenant)
        key = check_source(s, ref.source.bucket, ref.source.key, tenant)  # before any read: the trust boundary
        lane = choose_lane(s, tenant, ref)  # a grant, like the sources: before any read
        if ref.pages is not None:
            parse_page_ranges(ref.pages)  # junk costs no download
        doc_key = document_key(tenant, ref.document_id)
        route = choose_profile(s, tenant, ref, doc_key)  # the tenant's rules, before any read too
        data = retry_transient(
            lambda: self.store.get_bytes(ref.source.bucket, key, s.max_object_bytes, ref.source.version_id,
                                 etag=ref.source.etag),
            stop=self.stop.event,
        )
        info = inspect(data, ref.source.filename, max_pages=s.max_pages, max_page_pixels=s.max_page_pixels)
        source = ref.source.model_copy(update={"size": len(data)})
        if ref.pages is None:
            numbers, page_range = list(range(1, info.page_count + 1)), None
        else:
            numbers = select_pages(ref.pages, info.page_count)
            page_range = format_page_ranges(parse_page_ranges(ref.pages))
        dpi = (ref.options.dpi or self.profile_dpi(route.profile)) if info.kind == "pdf" else None
        cache_request = None
        if self.cache is not None:
            started = time.monotonic()
            cache_request = rc.request_digest(tenant=tenant, content_sha256=rc.content_digest(data), dpi=dpi,
                                              page_range=page_range)
            fingerprint = self.cache.workers.current(route.profile)  # what its workers would OCR it with now
            if ref.no_cache:
                m.RESULT_CACHE_LOOKUPS.labels("no_cache").inc()
            elif fingerprint is None:
                m.RESULT_CACHE_LOOKUPS.labels("no_fingerprint").inc()
            else:
                key = rc.cache_key(cache_request, fingerprint)
                cached = self.cache.lookup(key, tenant=tenant, pages=numbers, dpi=dpi)
                m.RESULT_CACHE_LOOKUPS.labels("miss" if cached is None else "hit").inc()
                if cached is not None:
                    log.info("document %s: cache hit (pages of %s)", doc_key, cached.result.document_id)
                    return [Output(ctx.results_topic, ref.document_id,
                                   encode(hit_result(cached, ref, source, started)))]
        slices = (self._write_slices(tenant, ref, data, numbers)
                  if wants_slices(s, info.kind, len(data), info.page_count) else {})
        # Placement is indexed by page number (page n on placement[(n - 1) % len]), which is how the
        # assembler finds the partitions of missing pages: pages not requested weigh nothing.
        last = numbers[-1]
        weights = [1.0] * last
        if info.kind == "pdf" and last <= (self.placement_of(route.profile, lane).partitions() or 0):  # else unused
            try:
                with open_pdf(data) as doc:
                    weights = page_weights(doc)[:last]
            except Exception as exc:  # a PDF that renders may still have odd stream entries
                log.info("page weights of %s unknown (%s): equal weights", ref.document_id, exc)
        if page_range is not None:
            wanted = set(numbers)
            weights = [w if n in wanted else 0.0 for n, w in enumerate(weights, start=1)]
        copies = [(route.profile, False)] + ([(route.shadow, True)] if route.shadow else [])
        outputs = []
        for profile, shadow in copies:
            copy_lane = DEFAULT_LANE if shadow else lane  # a shadow copy never takes an interactive slot
            placement = self.placement_of(profile, copy_lane).place(ref.document_id, weights)
            copy_dpi = (ref.options.dpi or self.profile_dpi(profile)) if info.kind == "pdf" else None
            pipeline_key = shadow_key(doc_key) if shadow else doc_key  # the copies never share state
            outputs += [
                Output(s.page_topic(profile, copy_lane), f"{pipeline_key}/{n}", encode(PageTask(
                    document_id=ref.document_id, source=source, page_number=n, page_count=len(numbers),
                    kind=info.kind, dpi=copy_dpi, submitted_at=ref.submitted_at, tenant=tenant, slice=slices.get(n),
                    placement=placement, page_range=page_range,
                    # written only off the defaults: records of the default profile's batch lane stay as they were
                    profile=None if profile == DEFAULT_PROFILE else profile,
                    lane=None if copy_lane == DEFAULT_LANE else copy_lane, shadow=shadow or None,
                    # a shadow copy is never cached and never called back: users never see it
                    cache_request=None if shadow else cache_request,
                    webhook_url=None if shadow else ref.webhook_url,
                )), partition=placed_partition(placement, n) if placement else None)
                for n in numbers
            ]
        m.LANE_DOCUMENTS.labels(lane).inc()
        return outputs

    def _write_slices(self, tenant: str | None, ref: DocumentRef, data: bytes,
                      numbers: list[int]) -> dict[int, ObjectRef]:
        """One-page PDFs of the pages ``numbers`` (1-based) of a large document
        (:mod:`ocrstream.slices`), written before its page tasks are published. A slice that exists already (a replayed ingest record) is kept as it
        is: a page task published before may still name its ETag.

        Raises:
            OcrstreamError: ``storage_error`` (after retries), ``corrupt_document``.
        """
        s, out = self.s, {}
        doc = open_pdf(data)
        try:
            for n in numbers:
                key = slice_key(s, tenant, ref.document_id, n)
                try:
                    info = retry_transient(lambda: self.store.stat(s.bucket, key), stop=self.stop.event)
                except OcrstreamError as exc:
                    if exc.code != ReasonCode.OBJECT_NOT_FOUND:
                        raise
                    body = page_pdf(doc, n)
                    info = retry_transient(lambda: self.store.put_bytes(key, body, "application/pdf"),
                                           stop=self.stop.event)
                out[n] = ObjectRef(bucket=s.bucket, key=key, filename=f"{n}.pdf", etag=info.etag,
                                   version_id=info.version_id, size=info.size, content_type="application/pdf")
        finally:
            doc.close()
        m.SLICES_WRITTEN.inc(len(numbers))
        return out

    def run(self) -> None:
        """Poll until stopped (SIGTERM/SIGINT), then commit and leave the group.

        Raises:
            FatalKafkaError: fenced or unrecoverable (see :mod:`ocrstream.streaming.loop`).
        """
        rt = self.rt
        rt.start()
        try:
            while not self.stop.is_set():
                msg = rt.poll(0.5)
                if msg is None:
                    continue
                outputs = rt.guard(msg, self.handle)  # a refused or failing record: dead letter + failed result
                rt.publish(outputs, [TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)])
        finally:
            try:
                rt.close()
            finally:
                if self.cache is not None:
                    self.cache.close()


def run_splitter(s: Settings, stop: StopFlag | None = None) -> int:
    """Run the splitter stage until SIGTERM/SIGINT (or ``stop``); returns the exit status."""
    return run_stage(lambda: Splitter(s, stop))
