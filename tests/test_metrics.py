"""Worker metrics: samples on the metrics topic and Prometheus /metrics, /healthz, /readyz (CPU host)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import jsonschema
import orjson
import pytest
from confluent_kafka import Producer

from ocrstream.streaming import StopFlag
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.engine.null import NullEngine
from producers.publish import DocumentPublisher
from ocrstream.streaming import now_ms
from ocrstream.kafka import producer_config
from schemas import ObjectRef, PageTask, WorkerMetrics, decode, encode

from conftest import REPO, consume_all, make_pdf

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
    stages.start(Splitter(settings, StopFlag(install_signals=False)))  # no HTTP port: the worker has it
    pdf = tmp_path / "three.pdf"
    pdf.write_bytes(make_pdf([["one"], ["two"], ["three"]]))
    with DocumentPublisher(s) as pub:
        pub.upload_and_publish(pdf)
    assert len(consume_all(s, s.topic("page-results"), 3, 60)) == 3
    # Two bad page records: a task whose object is gone (a failed page result) and a value that
    # is not JSON (a dead letter). Both must show up as errors by reason.
    task = PageTask(document_id="gone-doc", source=ObjectRef(bucket=s.bucket, key="uploads/gone.pdf", filename="gone.pdf"),
                    page_number=1, page_count=1, kind="pdf", dpi=150, submitted_at=now_ms())
    p = Producer(producer_config(s))
    p.produce(s.topic("pages"), encode(task), b"gone-doc/1", partition=0)
    p.produce(s.topic("pages"), b"{not json", b"junk", partition=1)
    p.flush(10)
    assert len(consume_all(s, s.topic("page-results"), 4, 60)) == 4

    deadline = time.monotonic() + 30
    while _get(base + "/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _get(base + "/readyz")[0] == 200

    # Samples come every second whatever the load; read until they account for the 4 pages and
    # the dead letter, and the consumer lag of the pages partitions has been reported (bounded).
    samples: list[WorkerMetrics] = []
    raw: list[bytes] = []

    def errors() -> dict[str, int]:
        out: dict[str, int] = {}
        for x in samples:
            for reason, n in x.errors.items():
                out[reason] = out.get(reason, 0) + n
        return out

    deadline = time.monotonic() + 60
    while (sum(x.pages for x in samples) < 4 or len(errors()) < 2 or not any(x.lag for x in samples)) \
            and time.monotonic() < deadline:
        raw = [msg.value() for msg in consume_all(s, s.topic("metrics"), len(samples) + 1, 10, up_to=True)]
        samples = [decode(value, WorkerMetrics) for value in raw]
    assert errors() == {"object_not_found": 1, "invalid_json": 1}
    lagged = next(x for x in samples if x.lag)
    assert set(lagged.lag) <= {f"{s.topic('pages')}/{p}" for p in range(12)} and min(lagged.lag.values()) >= 0
    validator = jsonschema.Draft202012Validator(orjson.loads((REPO / "schemas/json/worker_metrics.v1.schema.json")
                                                             .read_bytes()))
    for value in raw:
        validator.validate(orjson.loads(value))  # the committed JSON Schema, as downstream readers use it

    assert all(x.worker_id == s.worker_id and x.stage == "worker" and x.profile == "default" for x in samples)
    assert sum(x.pages for x in samples) >= 4 and any(x.batches > 0 for x in samples)
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
    # (process-wide counters: other tests in this session add to them, so presence, not values)
    # every worker series carries the model profile it serves (OCRSTREAM_PROFILE)
    assert 'ocrstream_pages_processed_total{profile="default",status="succeeded"}' in text
    assert 'ocrstream_pages_processed_total{profile="default",status="failed"}' in text
    assert 'ocrstream_batch_latency_seconds_count{profile="default"}' in text
    assert 'ocrstream_dead_letters_total{reason="invalid_json",stage="worker"}' in text
    assert f'ocrstream_consumer_lag{{partition="0",topic="{s.topic("pages")}"}}' in text

    # `ocrstream top` over the same topic: one row for this worker, with its figures.
    from rich.console import Console

    from ocrstream.top import run_top

    console = Console(record=True, width=220, force_terminal=False)
    recent = run_top(s, once=True, console=console)
    assert set(recent) == {s.worker_id}
    row = next(line for line in console.export_text().splitlines() if s.worker_id in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    newest = recent[s.worker_id][-1]
    assert cells[6:8] == ["-", "-"]  # GPU columns empty on a CPU host
    assert cells[9] == f"{newest.rss_bytes / 2**20:.0f}" and cells[10] == str(sum(newest.lag.values()))
    assert float(cells[2]) >= 0


def test_top_renders_a_row_per_worker_from_its_recent_samples():
    from rich.console import Console

    from ocrstream.top import render
    from schemas import GpuSample

    now = int(time.time() * 1000)
    gpu = GpuSample(index=0, uuid="GPU-1", name="H100", utilization_pct=87.0, memory_used_bytes=20 * 2**30,
                    memory_total_bytes=80 * 2**30)

    def sample(wid, at, **kw):
        base = dict(host="h-" + wid, worker_id=wid, stage="worker", at=at, interval_s=10, gpus=None, cpu_pct=95.0,
                    rss_bytes=900 * 2**20, pages=0, batches=0, mean_batch_size=0.0, pages_per_s=0.0,
                    batch_latency_ms_p50=None, batch_latency_ms_p95=None)
        return WorkerMetrics(**{**base, **kw})

    recent = {
        # 250 pages in 20 s, 20 batches of 10 and 15 pages; the newest sample finished no batch
        # but still has the GPU and lag figures, which are the newest sample's.
        "w1": [sample("w1", now - 20_000, pages=100, batches=10, mean_batch_size=10.0, batch_latency_ms_p50=900.0,
                      batch_latency_ms_p95=1400.0, errors={"corrupt_document": 2}),
               sample("w1", now - 10_000, pages=150, batches=10, mean_batch_size=15.0, batch_latency_ms_p50=800.0,
                      batch_latency_ms_p95=1300.0, errors={"engine_error": 1}),
               sample("w1", now, gpus=[gpu], lag={"ocr.pages/0": 30, "ocr.pages/1": 12})],
        "w2": [sample("w2", now, pages=4, batches=1, mean_batch_size=4.0, cpu_pct=180.0)],
    }
    console = Console(record=True, width=200)
    console.print(render(recent))
    text = console.export_text()
    row1 = next(line for line in text.splitlines() if "w1" in line).split("│")
    cells1 = [c.strip() for c in row1[1:-1]]
    assert cells1 == ["w1", "h-w1", "8.33", "12.5", "800", "1300", "87%", "20.0/80.0", "95", "900", "42", "3", "0"]
    cells2 = [c.strip() for c in next(line for line in text.splitlines() if "w2" in line).split("│")[1:-1]]
    assert cells2[2:6] == ["0.40", "4.0", "-", "-"] and cells2[6:8] == ["-", "-"] and cells2[8] == "180"
