"""Worker metrics: samples on the metrics topic and Prometheus /metrics, /healthz, /readyz (CPU host)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from consumers.common import StopFlag
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.engine.null import NullEngine
from producers.publish import DocumentPublisher
from schemas import WorkerMetrics, decode

from conftest import consume_all, make_pdf

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_worker_publishes_samples_and_serves_prometheus(settings, store, stages, tmp_path):
    port = _free_port()
    s = settings.model_copy(update={"metrics_interval_s": 1.0, "http_port": port})
    worker = OcrWorker(s, engine=NullEngine(), stop=StopFlag(install_signals=False))
    base = f"http://127.0.0.1:{port}"
    assert _get(base + "/healthz")[0] == 200
    assert _get(base + "/readyz")[0] == 503  # engine not loaded, nothing assigned yet
    stages.start(worker)
    stages.start(Splitter(s, StopFlag(install_signals=False)))
    pdf = tmp_path / "three.pdf"
    pdf.write_bytes(make_pdf([["one"], ["two"], ["three"]]))
    with DocumentPublisher(s) as pub:
        pub.upload_and_publish(pdf)
    consume_all(s, s.topic("page-results"), 3, 60)

    deadline = time.monotonic() + 30
    while _get(base + "/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _get(base + "/readyz")[0] == 200

    samples = [decode(msg.value(), WorkerMetrics) for msg in consume_all(s, s.topic("metrics"), 3, 30)]
    assert all(x.worker_id == s.worker_id and x.stage == "worker" for x in samples)
    assert sum(x.pages for x in samples) >= 3 and any(x.batches > 0 for x in samples)
    assert all(x.gpus is None for x in samples)  # CPU host: GPU fields null, not an error
    assert all(x.rss_bytes > 10_000_000 for x in samples)
    busy = [x for x in samples if x.batches]
    assert busy[0].mean_batch_size >= 1 and busy[0].batch_latency_ms_p50 is not None

    code, text = _get(base + "/metrics")
    assert code == 200
    for series in ("ocrstream_pages_processed_total", "ocrstream_batch_size_bucket",
                   "ocrstream_batch_latency_seconds_bucket", "ocrstream_page_latency_seconds_bucket",
                   "ocrstream_inflight_pages", "ocrstream_messages_consumed_total"):
        assert series in text, series
    assert 'ocrstream_pages_processed_total{status="succeeded"}' in text
