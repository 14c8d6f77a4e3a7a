"""Observability: Prometheus series, NVML sampling, metrics-topic samples (the HTTP endpoints are
:mod:`ocrstream.streaming.health`).

Prometheus series (prometheus-client, default registry):

- ``ocrstream_messages_consumed_total{stage}``, ``ocrstream_messages_produced_total{stage,topic}``
- ``ocrstream_pages_processed_total{status,profile}``, ``ocrstream_pages_turned_total{rotation}``, ``ocrstream_text_layer_pages_total``
- ``ocrstream_batch_size{profile}`` (histogram, pages), ``ocrstream_batch_latency_seconds{profile}`` (histogram)
- ``ocrstream_page_latency_seconds{profile}`` (histogram: ingest time -> page result)

``profile`` is the model profile the worker serves (``OCRSTREAM_PROFILE``), so latency and throughput
can be compared per profile (A/B and shadow traffic, ``ocrstream compare``).
- ``ocrstream_dead_letters_total{stage,reason}``
- ``ocrstream_outbox_documents_total{status}``, ``ocrstream_outbox_files_total{format}``,
  ``ocrstream_outbox_pdf_skipped_total{reason}``
- ``ocrstream_analytics_rows_total{table}``, ``ocrstream_analytics_files_total{table}``,
  ``ocrstream_analytics_compactions_total{table}``
- ``ocrstream_watch_published_total{trigger}`` (``event`` or ``scan``: the listing, a fallback in events mode)
- ``ocrstream_batch_limit_pages``, ``ocrstream_inflight_pages``, ``ocrstream_paused_partitions``, ``ocrstream_consumer_lag{topic,partition}``
- ``ocrstream_gateway_requests_total{route,code}``, ``ocrstream_gateway_documents_total{tenant,kind}``,
  ``ocrstream_gateway_refused_total{tenant,reason}``, ``ocrstream_gateway_page_backlog``,
  ``ocrstream_gateway_results{kind}``
- ``ocrstream_result_cache_lookups_total{outcome}``, ``ocrstream_result_cache_writes_total{outcome}``,
  ``ocrstream_result_cache_entries``
- ``ocrstream_webhook_calls_total{outcome}``, ``ocrstream_webhook_deliveries_total{outcome}``,
  ``ocrstream_webhook_call_seconds`` (histogram)
- ``ocrstream_gpu_utilization_percent{gpu}``, ``ocrstream_gpu_memory_used_bytes{gpu}``,
  ``ocrstream_gpu_memory_total_bytes{gpu}`` (only where NVML finds GPUs)
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Callable

import orjson
import psutil
from prometheus_client import Counter, Gauge, Histogram

from schemas import GpuSample

log = logging.getLogger(__name__)

MESSAGES_CONSUMED = Counter("ocrstream_messages_consumed", "Records consumed", ["stage"])
MESSAGES_PRODUCED = Counter("ocrstream_messages_produced", "Records produced", ["stage", "topic"])
PAGES_PROCESSED = Counter("ocrstream_pages_processed", "Pages OCR'd", ["status", "profile"])
TEXT_LAYER_PAGES = Counter("ocrstream_text_layer_pages", "PDF pages whose detections came from their own text layer "
                           "(OCRSTREAM_TEXT_LAYER; no OCR)")
PAGES_TURNED = Counter("ocrstream_pages_turned", "Pages read turned (scanned sideways or upside down; "
                       "OCRSTREAM_PAGE_ORIENTATION)", ["rotation"])
BATCH_SIZE = Histogram("ocrstream_batch_size", "Pages per engine micro-batch", ["profile"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
BATCH_LATENCY = Histogram("ocrstream_batch_latency_seconds", "Engine time per micro-batch", ["profile"],
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
PAGE_LATENCY = Histogram("ocrstream_page_latency_seconds", "Ingest (submitted_at) to page result", ["profile"],
                         buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
WATCH_PUBLISHED = Counter("ocrstream_watch_published", "Drop-folder object versions published to the ingest topic",
                          ["trigger"])
SLICES_WRITTEN = Counter("ocrstream_slices_written", "One-page slices of large PDFs written by the splitter")
SOURCE_BYTES = Counter("ocrstream_source_downloaded_bytes", "Bytes the OCR worker downloaded from object storage "
                       "(documents and slices; cache hits download nothing)", ["kind"])
DEAD_LETTERS = Counter("ocrstream_dead_letters", "Dead-letter records", ["stage", "reason"])
INFLIGHT_PAGES = Gauge("ocrstream_inflight_pages", "Pages consumed and not yet committed")
BATCH_LIMIT = Gauge("ocrstream_batch_limit_pages", "Current cap on pages per engine call (lowered after out of memory)")
PAUSED_PARTITIONS = Gauge("ocrstream_paused_partitions", "Partitions paused by back-pressure")
CONSUMER_LAG = Gauge("ocrstream_consumer_lag", "Messages behind the high watermark", ["topic", "partition"])
# Priority lanes (topology.pages, consumers/worker/stage.py)
LANE_DOCUMENTS = Counter("ocrstream_lane_documents", "Documents the splitter routed, by priority lane", ["lane"])
LANE_PAGES = Counter("ocrstream_lane_pages", "Pages the OCR worker finished (succeeded or failed), by priority lane",
                     ["lane"])
LANE_QUEUE_WAIT = Histogram("ocrstream_lane_queue_wait_seconds", "OCR worker: poll of a page task to the start of "
                            "its engine batch, by priority lane", ["lane"],
                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
LANE_PAGE_LATENCY = Histogram("ocrstream_lane_page_latency_seconds", "Ingest (submitted_at) to page result, by "
                              "priority lane", ["lane"], buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
LANE_HELD_PARTITIONS = Gauge("ocrstream_lane_held_partitions", "Batch-lane partitions paused while interactive pages "
                             "are in the worker")
# Outbox sink (consumers/sinks/outbox.py)
OUTBOX_DOCUMENTS = Counter("ocrstream_outbox_documents", "Document results handled by the outbox sink "
                           "(status succeeded, failed, deleted: files removed after a deletion request, or skipped: outside "
                           "OCRSTREAM_OUTBOX_SCOPE)", ["status"])
OUTBOX_FILES = Counter("ocrstream_outbox_files", "Files written by the outbox sink", ["format"])
OUTBOX_PDF_SKIPPED = Counter("ocrstream_outbox_pdf_skipped", "Searchable PDFs not written: the source object was "
                             "gone, replaced or unreadable", ["reason"])
# Analytics sink (consumers/sinks/parquet.py)
ANALYTICS_ROWS = Counter("ocrstream_analytics_rows", "Rows written to the Parquet tables", ["table"])
ANALYTICS_FILES = Counter("ocrstream_analytics_files", "Parquet files written by the analytics sink", ["table"])
ANALYTICS_COMPACTIONS = Counter("ocrstream_analytics_compactions", "Date folders compacted into one file", ["table"])
# Stage runtime (ocrstream/streaming/loop.py): liveness and the failure policy.
LOOP_PROGRESS = Gauge("ocrstream_loop_last_progress_timestamp_seconds",
                      "Unix time the stage loop last advanced (polled, handled or committed)", ["stage"])
LOOP_STALLED = Gauge("ocrstream_loop_stalled", "1 while work waits and the loop has not advanced for "
                     "OCRSTREAM_LIVENESS_TIMEOUT_S (/healthz answers 503)", ["stage"])
STAGE_ERRORS = Counter("ocrstream_stage_errors", "Unexpected exceptions while handling a record "
                       "(each became an internal_error dead letter)", ["stage"])
KAFKA_ERRORS = Counter("ocrstream_kafka_errors", "Kafka client errors seen by a stage", ["stage", "kind"])
DOCUMENTS_INCOMPLETE = Counter("ocrstream_documents_incomplete", "Documents given a failed (incomplete) "
                               "result after OCRSTREAM_DOCUMENT_DEADLINE_S")
POISON_PAGES = Counter("ocrstream_poison_pages", "Pages failed with worker_crash after "
                       "OCRSTREAM_MAX_PAGE_ATTEMPTS attempts that ended the worker process")
PAGE_RETRIES = Counter("ocrstream_page_retries", "Pages started again after an attempt that ended the worker "
                       "process (crash, kill, engine timeout)")
# HTTP gateway (producers/gateway/)
GATEWAY_REQUESTS = Counter("ocrstream_gateway_requests", "HTTP requests answered by the gateway", ["route", "code"])
GATEWAY_DOCUMENTS = Counter("ocrstream_gateway_documents", "Documents the gateway accepted (202)", ["tenant", "kind"])
GATEWAY_REFUSED = Counter("ocrstream_gateway_refused", "Submissions the gateway refused", ["tenant", "reason"])
GATEWAY_PAGE_BACKLOG = Gauge("ocrstream_gateway_page_backlog", "Page tasks the worker group has not committed, by "
                             "priority lane and model profile (last measurement; OCRSTREAM_GATEWAY_MAX_BACKLOG_PAGES)",
                             ["lane", "profile"])
GATEWAY_RESULTS = Gauge("ocrstream_gateway_results", "Documents in the gateway's results table (indexed: every "
                        "result seen; cached: held in memory; pending: accepted, no result yet)", ["kind"])
RESULT_CACHE_LOOKUPS = Counter("ocrstream_result_cache_lookups", "Documents the splitter looked up in the result "
                               "cache, by outcome: hit (published without OCR), miss, no_cache (the document asked "
                               "to be OCR'd), no_fingerprint (no single output fingerprint among the live workers)",
                               ["outcome"])
RESULT_CACHE_WRITES = Counter("ocrstream_result_cache_writes", "Succeeded documents the assembler stored in the "
                              "result cache (written) or could not (too_large)", ["outcome"])
RESULT_CACHE_ENTRIES = Gauge("ocrstream_result_cache_entries", "Entries in the splitter's index of the result-cache "
                             "topic")
# Completion webhooks (consumers/webhooks.py)
WEBHOOK_CALLS = Counter("ocrstream_webhook_calls", "HTTP calls of webhook receivers by outcome: success (2xx), "
                        "server_error (5xx, 429: retried), client_error (other answers, redirects included: final), "
                        "transport_error (connection, timeout: retried)", ["outcome"])
WEBHOOK_DELIVERIES = Counter("ocrstream_webhook_deliveries", "Document results the webhooks stage handled that named a "
                             "webhook: delivered, failed (retries spent: dead letter webhook_failed), refused (not an "
                             "allowed receiver: dead letter), expired (older than OCRSTREAM_WEBHOOK_MAX_AGE_S: not "
                             "called)", ["outcome"])
WEBHOOK_LATENCY = Histogram("ocrstream_webhook_call_seconds", "Duration of one webhook call (request sent to answer "
                            "read, or the error)", buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
GPU_UTIL = Gauge("ocrstream_gpu_utilization_percent", "GPU utilisation", ["gpu"])
GPU_MEM_USED = Gauge("ocrstream_gpu_memory_used_bytes", "GPU memory used", ["gpu"])
GPU_MEM_TOTAL = Gauge("ocrstream_gpu_memory_total_bytes", "GPU memory total", ["gpu"])


class GpuSampler:
    """NVML sampling (``nvidia-ml-py``). NVML absence is detected once: :attr:`available` is
    False and :meth:`sample` returns None, without an error per sample."""

    def __init__(self) -> None:
        self.available = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.count = pynvml.nvmlDeviceGetCount()
            self.available = self.count > 0
        except Exception as exc:  # no driver, no library, no GPU: all mean "CPU host"
            log.info("NVML unavailable (%s): GPU fields will be null", type(exc).__name__)
            self.count = 0

    def sample(self) -> list[GpuSample] | None:
        """One :class:`GpuSample` per GPU, or None on a host without NVIDIA GPUs."""
        if not self.available:
            return None
        nv = self._nvml
        out = []
        pid = os.getpid()
        for i in range(self.count):
            h = nv.nvmlDeviceGetHandleByIndex(i)

            def opt(fn: Callable, *a):
                try:
                    return fn(h, *a)
                except Exception:  # a field a GPU model does not support stays null
                    return None

            util = opt(nv.nvmlDeviceGetUtilizationRates)
            mem = opt(nv.nvmlDeviceGetMemoryInfo)
            power = opt(nv.nvmlDeviceGetPowerUsage)
            limit = opt(nv.nvmlDeviceGetEnforcedPowerLimit)
            procs = opt(nv.nvmlDeviceGetComputeRunningProcesses) or []
            mine = sum((p.usedGpuMemory or 0) for p in procs if p.pid == pid) or None
            s = GpuSample(
                index=i, uuid=str(opt(nv.nvmlDeviceGetUUID)), name=str(opt(nv.nvmlDeviceGetName)),
                utilization_pct=float(util.gpu) if util else None,
                memory_used_bytes=int(mem.used) if mem else None, memory_total_bytes=int(mem.total) if mem else None,
                temperature_c=opt(nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU),
                power_w=power / 1000 if power is not None else None,
                power_limit_w=limit / 1000 if limit is not None else None,
                sm_clock_mhz=opt(nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM), process_memory_bytes=mine,
            )
            out.append(s)
            label = str(i)
            if s.utilization_pct is not None:
                GPU_UTIL.labels(label).set(s.utilization_pct)
            if s.memory_used_bytes is not None:
                GPU_MEM_USED.labels(label).set(s.memory_used_bytes)
                GPU_MEM_TOTAL.labels(label).set(s.memory_total_bytes or 0)
        return out


class ProcessSampler:
    """CPU % (of one core, since the last sample) and RSS of this process (psutil)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.proc.cpu_percent(None)  # first call primes the counter

    def sample(self) -> tuple[float, int]:
        return self.proc.cpu_percent(None), self.proc.memory_info().rss


def parse_lag(stats_json: str) -> dict[str, int]:
    """Consumer lag per ``topic/partition`` from librdkafka's statistics JSON
    (``statistics.interval.ms``; field ``topics.*.partitions.*.consumer_lag``,
    -1 = unknown, partition -1 = internal)."""
    stats = orjson.loads(stats_json)
    lag: dict[str, int] = {}
    for topic, t in stats.get("topics", {}).items():
        for pid, p in t.get("partitions", {}).items():
            if int(pid) < 0 or not p.get("desired") and not p.get("fetch_state") == "active":
                continue
            value = p.get("consumer_lag", -1)
            if value >= 0:
                lag[f"{topic}/{pid}"] = value
                CONSUMER_LAG.labels(topic, pid).set(value)
    return lag


def hostname() -> str:
    return socket.gethostname()
