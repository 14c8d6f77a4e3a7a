"""Publishing side of the worker: page results, dead letters, and the worker's metrics sample."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from ocrstream import metrics as m
from ocrstream import result_cache as rc
from ocrstream.engine import PageOcr
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.settings import Settings
from ocrstream.streaming import Output, dead_letter, dead_letter_headers, error_of, now_ms
from schemas import Detection, EngineInfo, PageResult, WorkerMetrics, encode
from topology import DEFAULT_PROFILE, document_key, shadow_key, topic_specs

from .items import WorkItem

STAGE = "worker"
MAX_RESULT_BYTES = next(int(t.config["max.message.bytes"]) for t in topic_specs() if t.name == "page-results")


@dataclass
class WorkerStats:
    """Counters since the last metrics sample (read by the metrics reporter)."""

    pages: int = 0
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    batch_latency_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)

    def reset(self) -> "WorkerStats":
        snapshot = WorkerStats(self.pages, self.batches, self.batch_sizes, self.batch_latency_ms, self.errors)
        self.pages, self.batches, self.batch_sizes, self.batch_latency_ms, self.errors = 0, 0, [], [], Counter()
        return snapshot


def page_result(s: Settings, item: WorkItem, ocr: PageOcr | BaseException | None, engine: EngineInfo,
                stats: WorkerStats) -> Output:
    """The page-result record of one page (``failed`` with its reason code when it failed;
    ``result_too_large`` without detections when it would not fit the topic). A task with a
    ``cache_request`` gets a ``cache_key`` made with this worker's own output fingerprint
    (:mod:`ocrstream.result_cache`): the key of a cached result names what really produced it."""
    task = item.task
    # The profile this worker serves, not the one the task names: they agree unless a task was
    # written to another profile's topic, and the result must say which models read the page.
    profile = None if s.profile == DEFAULT_PROFILE else s.profile
    cache = rc.cache_key(task.cache_request, rc.fingerprint_digest(s, s.profile)) if task.cache_request else None
    error = item.error or (ocr if isinstance(ocr, BaseException) else None)
    if error is not None:
        err = error_of(error)
        stats.errors[err.code] += 1
        result = PageResult(document_id=task.document_id, source=task.source, page_number=task.page_number,
                            page_count=task.page_count, status="failed", error=err, width=0, height=0,
                            dpi=task.dpi, engine=engine, worker_id=s.worker_id,
                            submitted_at=task.submitted_at, completed_at=now_ms(), timings_ms=item.timings,
                            tenant=task.tenant, placement=task.placement, page_range=task.page_range,
                            profile=profile, lane=task.lane, shadow=task.shadow, cache_key=cache,
                            webhook_url=task.webhook_url)
    else:
        h, w = item.shape
        result = PageResult(
            document_id=task.document_id, source=task.source, page_number=task.page_number,
            page_count=task.page_count, width=w, height=h, dpi=task.dpi,
            detections=[Detection(text=l.text, polygon=l.polygon, confidence=l.confidence) for l in ocr.lines],
            engine=engine, worker_id=s.worker_id, submitted_at=task.submitted_at,
            completed_at=now_ms(), timings_ms={**item.timings, **ocr.timings_ms}, tenant=task.tenant,
            placement=task.placement, page_range=task.page_range, profile=profile, lane=task.lane,
            shadow=task.shadow, rotation=getattr(ocr, "rotation", 0) or None,
            text_source="text_layer" if item.text_layer is not None else None, cache_key=cache,
            webhook_url=task.webhook_url,
        )
    value = encode(result)
    key = document_key(task.tenant, task.document_id)  # one assembler partition per (tenant, document)
    if task.shadow:
        key = shadow_key(key)  # the shadow copy is a document of its own in the assembler (topology.shadow)
    if len(value) + len(key) + 4096 > MAX_RESULT_BYTES:  # key + framing count too
        err = OcrstreamError(ReasonCode.RESULT_TOO_LARGE, f"page result is {len(value)} bytes")
        result = result.model_copy(update={"status": "failed", "error": error_of(err), "detections": []})
        value = encode(result)
    return Output(s.topic("page-results"), key, value)


def outputs_for(s: Settings, items: list[WorkItem], results: list, engine: EngineInfo,
                stats: WorkerStats) -> list[Output]:
    """Dead letters for invalid records, page results for the rest; counts the metrics."""
    outputs: list[Output] = []
    for item, ocr in zip(items, results):
        ocr = ocr if ocr is not None else item.text_layer
        if item.bad is not None:
            dl = dead_letter(item.msg, item.bad, STAGE)
            stats.errors[dl.reason] += 1
            m.DEAD_LETTERS.labels(STAGE, dl.reason).inc()
            outputs.append(Output(s.topic("dead-letters"), dl.key, encode(dl), dead_letter_headers(dl)))
            continue
        outputs.append(page_result(s, item, ocr, engine, stats))
        stats.pages += 1
        failed = item.error is not None or isinstance(ocr, BaseException)
        if isinstance(item.error, OcrstreamError) and item.error.code == ReasonCode.WORKER_CRASH:
            m.POISON_PAGES.inc()
        m.PAGES_PROCESSED.labels("failed" if failed else "succeeded", s.profile).inc()
        if item.text_layer is not None and not failed:
            m.TEXT_LAYER_PAGES.inc()
        if not failed and getattr(ocr, "rotation", 0):
            m.PAGES_TURNED.labels(str(ocr.rotation)).inc()
        latency_s = max(0.0, (now_ms() - item.task.submitted_at) / 1000)
        m.PAGE_LATENCY.labels(s.profile).observe(latency_s)
        m.LANE_PAGES.labels(item.lane).inc()
        m.LANE_PAGE_LATENCY.labels(item.lane).observe(latency_s)
    return outputs


class MetricsReporter:
    """One :class:`~schemas.WorkerMetrics` sample per ``metrics_interval_s`` to the metrics topic
    (out of band: in exactly-once mode the delivery producer only writes inside transactions)."""

    def __init__(self, s: Settings, producer):
        self.s, self.producer = s, producer
        self.gpu = m.GpuSampler()
        self.proc = m.ProcessSampler()
        self.last = time.monotonic()
        self.next = self.last + s.metrics_interval_s

    def due(self) -> bool:
        return time.monotonic() >= self.next

    def publish(self, stats: WorkerStats, lag: dict[str, int]) -> WorkerMetrics:
        """Publish a sample with the figures since the last one."""
        now = time.monotonic()
        interval = max(1e-6, now - self.last)
        self.last, self.next = now, now + self.s.metrics_interval_s
        st = stats.reset()
        cpu, rss = self.proc.sample()
        lat = sorted(st.batch_latency_ms)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None

        sample = WorkerMetrics(
            host=m.hostname(), worker_id=self.s.worker_id, stage=STAGE, at=now_ms(), interval_s=round(interval, 3),
            gpus=self.gpu.sample(), cpu_pct=cpu, rss_bytes=rss, pages=st.pages, batches=st.batches,
            mean_batch_size=round(sum(st.batch_sizes) / len(st.batch_sizes), 2) if st.batch_sizes else 0.0,
            pages_per_s=round(st.pages / interval, 3), batch_latency_ms_p50=pct(0.5), batch_latency_ms_p95=pct(0.95),
            errors=dict(st.errors), lag=dict(lag), output_fingerprint=rc.fingerprint_digest(self.s, self.s.profile),
            profile=self.s.profile,
        )
        self.producer.produce(self.s.topic("metrics"), encode(sample), self.s.worker_id)
        self.producer.poll(0)
        return sample
