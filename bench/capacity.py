"""Capacity model: for N pages/s at D DPI, how many OCR workers (or GPUs), partitions and
brokers, and what lag and latency to expect; every input measured on this machine (not a test).

    python bench/capacity.py measure [--pages 4] [--dpis 100,150,200,300] [--seconds 5]
                                     [--framework-pages 60] [--check-pages 12]
    python bench/capacity.py model --pages-per-s 50 --dpi 150 [--gpu-pages-per-s R] [--doc-pages 10]
    python bench/capacity.py check

``measure`` writes ``bench/out/capacity-inputs.json``:

1. **engine**: one worker's time per page on one core (render, detection, recognition; the
   engine with one thread, as ``ocrstream run`` gives each worker process one core) at each DPI,
   over the first ``--pages`` scanned court-filing pages (``../shared/data/scans-dev``, or the
   generated samples), and the size of the page task and page result records those pages give.
2. **broker**: a local 3-broker KRaft cluster (``devtools.stack``, the code behind
   ``ocrstream stack up --brokers 3``; ports 39192-39197) and a topic of 12 partitions with
   the production replication (3 copies, ``min.insync.replicas`` 2). An ``acks=all``, lz4,
   idempotent producer (the stages' settings) writes page-result-sized records as fast as it
   can for ``--seconds``: MB/s and records/s (the cluster's write capacity as the stages use it),
   the same into one partition, and at a low rate (50/s) the produce-to-acknowledgement and
   produce-to-consume latency of one hop.
3. **framework**: the whole pipeline on that cluster without OCR (``OCRSTREAM_ENGINE=none``, one
   worker) over ``--framework-pages`` scanned pages: the CPU seconds per page of the splitter,
   the assembler, the brokers and the worker's download/render/publish (``/proc``, psutil), with
   the pages flowing fast enough that idle polling adds little.
4. **point**: the whole pipeline (splitter, assembler, 2 workers of 1 thread: ``ocrstream run``
   on 2 cores) on that cluster with ``--check-pages`` scanned pages at 150 DPI submitted at
   once: pages/s, each page's submit-to-result latency, the record sizes on the topics, and the
   CPU seconds per page of each process.

``model`` turns the inputs into a plan (JSON); ``check`` runs the model for the measured point
(this machine, 2 workers, the same burst) and prints prediction against measurement.

The inputs are only as good as the machine they were measured on: this is a 2-core development
machine shared with other work, so the broker figures (three JVMs, the producer and SeaweedFS on
the same two cores) are a floor, not what a broker on its own host does; the file records the
load average during each measurement. GPU throughput has not been measured (no GPU host): the
model takes it as ``--gpu-pages-per-s`` and marks the plan as assuming it.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ocrstream.settings import Settings  # noqa: E402

OUT = REPO / "bench" / "out"
INPUTS = OUT / "capacity-inputs.json"
BENCH_DIR = REPO / ".ocrstream-bench-cluster"

# Model defaults (what a deployment picks; override on the command line).
UTILIZATION = 0.7  # planned busy share of a worker / broker: headroom for bursts and queueing delay
PARTITION_HEADROOM = 2.0  # pages partitions per planned worker: the autoscaler may double the group
KAFKA_HOPS = 4  # ingest -> pages -> page-results -> document-results -> the client reading it
PARTS = ("engine", "broker", "framework", "point")


def cluster_settings(**kw) -> Settings:
    """The benchmark's own 3-broker cluster and S3 (ports apart from bench/throughput.py's stack)."""
    base = dict(kafka_bootstrap_servers="127.0.0.1:39192,127.0.0.1:39194,127.0.0.1:39196", kafka_port=39192,
                kafka_controller_port=39193, stack_brokers=3, s3_endpoint="127.0.0.1:39533", s3_port=39533,
                stack_port_base=41100, stack_dir=BENCH_DIR, kafka_libs=REPO / "deploy" / "kafka" / "libs",
                s3_access_key="ocrstream", s3_secret_key="ocrstream-secret", text_layer="off")
    base.update(kw)
    return Settings(**base)


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))], 1)


# --- 1. engine ----------------------------------------------------------------------------------


def measure_engine(pages: int, dpis: list[int]) -> dict:
    """Per-page render/det/rec time on one core at each DPI, and record sizes."""
    from ocrstream.engine import create_engine
    from schemas import Detection, EngineInfo, ObjectRef, PageResult, PageTask, encode
    from throughput import pick_documents, render_all

    tmp = REPO / ".ocrstream-bench" / "docs"
    tmp.mkdir(parents=True, exist_ok=True)
    docs = pick_documents(pages, tmp)
    src = ObjectRef(bucket="ocrstream", key=f"uploads/{uuid.uuid4().hex}/DOC710S730.pdf", filename="DOC710S730.pdf",
                    etag="9b2cf535f27731c974343645a3985328", size=2_400_000, content_type="application/pdf")
    out = {}
    engine = None
    for dpi in dpis:
        s = cluster_settings(render_dpi=dpi, engine_threads=1)
        if engine is None:
            engine = create_engine(s)
            engine.ocr_batch([next(render_all(docs[0], s))])  # warm-up
        rows = []
        load = [_load()]
        for d in docs:
            t = time.perf_counter()
            for img in render_all(d, s):
                render_ms = (time.perf_counter() - t) * 1000
                t_ocr = time.perf_counter()
                (res,) = engine.ocr_batch([img])
                ocr_ms = (time.perf_counter() - t_ocr) * 1000
                h, w = img.shape[:2]
                result = PageResult(document_id=uuid.uuid4().hex, source=src, page_number=1, page_count=4, width=w,
                                    height=h, dpi=dpi, engine=EngineInfo(**engine.info.model_dump()),
                                    detections=[Detection(text=line.text, polygon=line.polygon,
                                                          confidence=line.confidence) for line in res.lines],
                                    worker_id="worker-0", submitted_at=1795313695978, completed_at=1795313699120,
                                    timings_ms={"download_ms": 3.1, "render_ms": render_ms, **res.timings_ms},
                                    placement=[0, 1, 2, 3])
                task = PageTask(document_id=result.document_id, source=src, page_number=1, page_count=4, kind="pdf",
                                dpi=dpi, submitted_at=1795313695978, placement=[0, 1, 2, 3])
                rows.append({"render_ms": render_ms, "ocr_ms": ocr_ms, "det_ms": res.timings_ms.get("det_ms", 0.0),
                             "rec_ms": res.timings_ms.get("rec_ms", 0.0), "lines": len(res.lines),
                             "result_bytes": len(encode(result)), "task_bytes": len(encode(task))})
                if len(rows) >= pages:
                    break
                t = time.perf_counter()
            if len(rows) >= pages:
                break
        load.append(_load())
        mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
        s_page = (mean["render_ms"] + mean["ocr_ms"]) / 1000
        out[str(dpi)] = {"pages": len(rows), "render_ms": round(mean["render_ms"], 1), "det_ms": round(mean["det_ms"], 1),
                         "rec_ms": round(mean["rec_ms"], 1), "ocr_ms": round(mean["ocr_ms"], 1),
                         "s_per_page": round(s_page, 3), "pages_per_s_per_core": round(1 / s_page, 4),
                         "lines_per_page": round(mean["lines"], 1), "page_result_bytes": round(mean["result_bytes"]),
                         "page_task_bytes": round(mean["task_bytes"]), "load_avg": load}
    return {"engine": engine.info.model_dump(), "threads": 1, "by_dpi": out,
            "command": f"python bench/capacity.py measure --pages {pages} --dpis {','.join(map(str, dpis))}"}


# --- 2. broker ----------------------------------------------------------------------------------


def _perf_topic(s: Settings, partitions: int) -> str:
    from ocrstream.kafka import make_admin
    from topology import TopicSpec, apply_topics

    name = f"perf-{uuid.uuid4().hex[:6]}"
    apply_topics(make_admin(s), [TopicSpec(name, partitions, 3, {"min.insync.replicas": "2"})], "bench.", fit=False)
    return f"bench.{name}"


def _producer(s: Settings, **extra):
    from confluent_kafka import Producer

    from ocrstream.kafka import producer_config

    conf = {k: v for k, v in producer_config(s, **extra).items() if k != "logger"}
    return Producer(conf)


def _flood(s: Settings, topic: str, value: bytes, seconds: float, partitions: int, broker_pids: list[int]) -> dict:
    """Produce as fast as the client allows for ``seconds``; count acknowledged records and the
    brokers' CPU seconds per MB (replication included)."""
    p = _producer(s, **{"queue.buffering.max.messages": 20000})
    acked = [0]
    failed = [0]

    def report(err, msg):
        if err is None and msg.offset() >= 0:
            acked[0] += 1
        else:
            failed[0] += 1

    load = [_load()]
    cpu0 = _cpu_s(broker_pids)
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds:
        try:
            p.produce(topic, value=value, key=str(i).encode(), partition=i % partitions, on_delivery=report)
            i += 1
        except BufferError:
            p.poll(0.01)
        p.poll(0)
    p.flush(120)
    elapsed = time.perf_counter() - t0
    cpu = _cpu_s(broker_pids) - cpu0
    load.append(_load())
    mb = acked[0] * len(value) / 1e6
    return {"seconds": round(elapsed, 2), "records": acked[0], "failed": failed[0],
            "records_per_s": round(acked[0] / elapsed), "mb_per_s": round(mb / elapsed, 2),
            "record_bytes": len(value), "broker_cpu_s_per_mb": round(cpu / mb, 4) if mb else None, "load_avg": load}


def _latency(s: Settings, topic: str, value: bytes, n: int = 250, rate: float = 50.0) -> dict:
    """One hop at a low rate: produce -> acknowledgement (acks=all) and produce -> consumed."""
    from confluent_kafka import Consumer, TopicPartition

    from ocrstream.kafka import consumer_config

    c = Consumer({k: v for k, v in consumer_config(s, f"bench-{uuid.uuid4().hex[:6]}", **{"fetch.wait.max.ms": 100}).items()
                  if k != "logger"})
    md = c.list_topics(topic, timeout=10).topics[topic]
    c.assign([TopicPartition(topic, q, -1) for q in md.partitions])  # from the end
    seen: dict[int, float] = {}
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            m = c.poll(0.1)
            if m is not None and not m.error():
                seen[int(m.key())] = time.perf_counter()

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    time.sleep(3)  # the consumer has its positions
    p = _producer(s)
    sent: dict[int, float] = {}
    acked: dict[int, float] = {}

    def report(err, msg):
        if err is None:
            acked[int(msg.key())] = time.perf_counter()

    for i in range(n):
        sent[i] = time.perf_counter()
        p.produce(topic, value=value, key=str(i).encode(), on_delivery=report)
        p.poll(0)
        time.sleep(1 / rate)
    p.flush(60)
    deadline = time.monotonic() + 30
    while len(seen) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    th.join(5)
    c.close()
    ack = [(acked[i] - sent[i]) * 1000 for i in acked]
    e2e = [(seen[i] - sent[i]) * 1000 for i in seen if i in sent]
    return {"records": n, "rate_per_s": rate, "ack_ms_p50": _pct(ack, 0.5), "ack_ms_p99": _pct(ack, 0.99),
            "hop_ms_p50": _pct(e2e, 0.5), "hop_ms_p99": _pct(e2e, 0.99), "consumed": len(e2e), "load_avg": _load()}


def measure_broker(s: Settings, seconds: float, record_bytes: int) -> dict:
    """Write throughput and one-hop latency of the local 3-broker cluster (production replication)."""
    from devtools.stack import Stack

    # Hex of random bytes: about as compressible by lz4 as page results' JSON is not; a floor.
    value = os.urandom(record_bytes // 2).hex().encode()[:record_bytes]
    t12, t1 = _perf_topic(s, 12), _perf_topic(s, 1)
    pids = [n.status().pid for n in Stack(s).kafka.nodes]
    idle0 = _cpu_s(pids)
    time.sleep(5)
    idle = (_cpu_s(pids) - idle0) / 5
    return {"brokers": 3, "replication_factor": 3, "min_insync_replicas": 2, "acks": "all",
            "idle_cpu_cores": round(idle, 3),
            "all_partitions": _flood(s, t12, value, seconds, 12, pids),
            "one_partition": _flood(s, t1, value, seconds, 1, pids),
            "latency": _latency(s, t12, value[:2048]),
            "command": f"python bench/capacity.py measure --seconds {seconds:g}"}


# --- 3. point -----------------------------------------------------------------------------------


def _cpu_s(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def _run_point(s: Settings, pages: int, workers: int) -> dict:
    """The pipeline on the cluster, ``pages`` scanned pages submitted at once after a warm-up:
    pages/s, page latencies, record sizes on the topics, CPU seconds per page of each process."""
    from confluent_kafka import Consumer, TopicPartition

    from devtools.stack import Stack
    from ocrstream.kafka import consumer_config
    from producers.publish import DocumentPublisher
    from producers.results import ResultFollower
    from throughput import Pipeline, pick_documents, timed_run

    tmp = REPO / ".ocrstream-bench" / "docs"
    tmp.mkdir(parents=True, exist_ok=True)
    docs = pick_documents(pages, tmp)
    pipe = Pipeline(s, workers, BENCH_DIR / "logs")
    stack = Stack(pipe.s)
    kinds = {"worker": [p.pid for p in pipe.procs[2:]], "splitter": [pipe.procs[0].pid],
             "assembler": [pipe.procs[1].pid], "brokers": [n.status().pid for n in stack.kafka.nodes],
             "s3": [stack.s3.status().pid]}
    try:
        follower = ResultFollower(pipe.s)  # warm-up: every worker loaded its engine and holds partitions
        with DocumentPublisher(pipe.s) as pub:
            warm = [pub.upload_and_publish(docs[0]) for _ in range(workers)]
        follower.wait_for(warm, timeout_s=900)
        follower.close()
        before = {k: _cpu_s(v) for k, v in kinds.items()}
        load = [_load()]
        res = timed_run(pipe.s, docs, timeout_s=3600)
        load.append(_load())
        after = {k: _cpu_s(v) for k, v in kinds.items()}
        c = Consumer({k: v for k, v in consumer_config(pipe.s, f"bench-{uuid.uuid4().hex[:6]}").items() if k != "logger"})
        sizes: dict[str, list[int]] = {}
        latency = []
        warm_ids = set(warm)
        for name in ("pages", "page-results", "document-results"):
            topic = pipe.s.topic(name)
            md = c.list_topics(topic, timeout=10).topics[topic]
            ends = {q: c.get_watermark_offsets(TopicPartition(topic, q), timeout=10)[1] for q in md.partitions}
            c.assign([TopicPartition(topic, q, 0) for q, e in ends.items() if e > 0])
            want, got = sum(ends.values()), 0
            deadline = time.monotonic() + 60
            while got < want and time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is None or m.error():
                    continue
                got += 1
                doc = orjson.loads(m.value())
                if doc.get("document_id") in warm_ids:
                    continue
                sizes.setdefault(name, []).append(len(m.value()))
                if name == "page-results":
                    latency.append(doc["completed_at"] - doc["submitted_at"])
            c.unassign()
        c.close()
    finally:
        pipe.close()
    n = res["pages"]
    return {"workers": workers, "engine": pipe.s.engine, "engine_threads": pipe.s.engine_threads,
            "dpi": pipe.s.render_dpi, "pages": n, "documents": len(docs), "seconds": res["seconds"],
            "pages_per_s": res["pages_per_s"],
            "page_latency_ms": {"p50": _pct(latency, 0.5), "p95": _pct(latency, 0.95), "max": max(latency)},
            "batch_max_pages": pipe.s.batch_max_pages,
            "bytes": {k: round(statistics.fmean(v)) for k, v in sizes.items()},
            "document_result_bytes_per_page": round(sum(sizes.get("document-results", [0])) / n),
            "cpu_s_per_page": {k: round((after[k] - before[k]) / n, 4) for k in kinds}, "load_avg": load}


def measure_point(s: Settings, pages: int, workers: int = 2) -> dict:
    """The check point: 2 OCR workers of one thread each (``ocrstream run`` on 2 cores)."""
    out = _run_point(s.model_copy(update={"engine_threads": 1}), pages, workers)
    out["command"] = f"python bench/capacity.py measure --check-pages {pages}"
    return out


def measure_framework(s: Settings, pages: int) -> dict:
    """The pipeline without OCR (``OCRSTREAM_ENGINE=none``, one worker) at full speed: what a page
    costs the splitter, the assembler, the brokers and the worker's download/render/publish, with
    little idle time in the figures."""
    out = _run_point(s.model_copy(update={"engine": "none"}), pages, 1)
    out["command"] = f"python bench/capacity.py measure --framework-pages {pages}"
    return out


def cmd_measure(args) -> None:
    from devtools.stack import Stack

    dpis = [int(x) for x in args.dpis.split(",")]
    parts = set(args.parts.split(","))
    # --parts: measure only these, keep the others from the existing file
    inputs = orjson.loads(INPUTS.read_bytes()) if parts != set(PARTS) and INPUTS.exists() else {}
    inputs.update({"cpus": os.cpu_count(),
                   "note": "2-core machine shared with other work: broker figures are a floor (load_avg = 1-min load "
                           "average at the start and end of each measurement)"})
    inputs.setdefault("measured_at", {})
    if isinstance(inputs["measured_at"], str):
        inputs["measured_at"] = {k: inputs["measured_at"] for k in PARTS if k in inputs}
    now = time.strftime("%Y-%m-%d %H:%M")
    if "engine" in parts:
        inputs["engine"], inputs["measured_at"]["engine"] = measure_engine(args.pages, dpis), now
    s = cluster_settings()
    stack = Stack(s)
    if parts & {"broker", "framework", "point"}:
        stack.up()
    try:
        if "broker" in parts:
            rb = inputs["engine"]["by_dpi"].get("150", next(iter(inputs["engine"]["by_dpi"].values())))["page_result_bytes"]
            inputs["broker"], inputs["measured_at"]["broker"] = measure_broker(s, args.seconds, rb), now
        if "framework" in parts and args.framework_pages:
            inputs["framework"] = measure_framework(s, args.framework_pages)
            inputs["measured_at"]["framework"] = now
        if "point" in parts and args.check_pages:
            inputs["point"], inputs["measured_at"]["point"] = measure_point(s, args.check_pages), now
    finally:
        if not args.keep:
            stack.down()
    OUT.mkdir(parents=True, exist_ok=True)
    INPUTS.write_bytes(orjson.dumps(inputs, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(inputs, option=orjson.OPT_INDENT_2).decode())


# --- model --------------------------------------------------------------------------------------


def _interp(by_dpi: dict, dpi: int, key: str) -> tuple[float, str]:
    """``key`` at ``dpi``, linear between the two nearest measured DPIs; outside the measured range
    the nearest end is used and the note says so."""
    pts = sorted((int(d), v[key]) for d, v in by_dpi.items())
    if dpi <= pts[0][0] or dpi >= pts[-1][0]:
        d, v = pts[0] if dpi <= pts[0][0] else pts[-1]
        return v, ("" if d == dpi else f"{key} at {dpi} DPI taken from {d} DPI (outside the measured range)")
    for (d0, v0), (d1, v1) in zip(pts, pts[1:]):
        if d0 <= dpi <= d1:
            return v0 + (v1 - v0) * (dpi - d0) / (d1 - d0), ""
    raise AssertionError


def erlang_c(c: int, a: float) -> float:
    """Probability that a page waits (M/M/c, ``c`` servers, offered load ``a`` = lambda/mu < c)."""
    if a >= c:
        return 1.0
    term, total = 1.0, 1.0
    for k in range(1, c):
        term *= a / k
        total += term
    last = term * a / c / (1 - a / c)
    return last / (total + last)


def _round_up(n: float, step: int) -> int:
    return max(step, int(math.ceil(n / step)) * step)


def plan(inputs: dict, pages_per_s: float, dpi: int, *, gpu_pages_per_s: float | None = None,
         utilization: float = UTILIZATION, broker_cores: int = 4, doc_pages: int = 10,
         batch_max_pages: int = 8, batch_max_wait_ms: int = 200, backlog_age_s: float = 60.0) -> dict:
    """The deployment for ``pages_per_s`` pages per second at ``dpi``.

    Workers: CPU workers of one core each (``ocrstream run``), ``ceil(N / (utilization x mu))``,
    ``mu`` = 1 / (render + OCR time per page at ``dpi``); or GPUs at ``gpu_pages_per_s`` each
    (assumed: not measured), plus CPU cores that render for them. Partitions: ``pages`` (and
    ``page-attempts``) ``PARTITION_HEADROOM`` x the workers (an autoscaler may double the group),
    in steps of 12 (split evenly over groups of 1-4, 6, 12), at least the topology's 12;
    ``page-results`` (= ``assembler-state``, ``document-results``) and ``ingest`` one per
    assembler / splitter needed by their measured CPU seconds per page, in steps of 6, at least 6. Brokers: the more
    of (bytes written x 3 copies against the measured write rate) and (broker CPU seconds per
    page against ``broker_cores`` each), at least 3. Queueing: M/M/c (Erlang C) over the
    workers. Latency of a page: queueing + its micro-batch (1 page plus those arriving during
    ``batch_max_wait_ms``, at most ``batch_max_pages``) x the page time + ``KAFKA_HOPS`` x the
    measured one-hop latency.
    """
    eng, broker, point = inputs["engine"]["by_dpi"], inputs["broker"], inputs.get("point")
    notes = []
    s_page, note = _interp(eng, dpi, "s_per_page")
    render_ms, _ = _interp(eng, dpi, "render_ms")
    task_b, _ = _interp(eng, dpi, "page_task_bytes")
    result_b, _ = _interp(eng, dpi, "page_result_bytes")
    notes += [note] if note else []
    n = pages_per_s
    if gpu_pages_per_s:
        mu = gpu_pages_per_s
        workers = math.ceil(n / (utilization * mu))
        render_cores = math.ceil(n * render_ms / 1000 / utilization)
        compute = {"device": "gpu", "gpus": workers, "gpu_pages_per_s": mu, "gpu_pages_per_s_measured": False,
                   "render_cores": render_cores, "workers": workers}
        notes.append("GPU throughput is an assumption (--gpu-pages-per-s), not a measurement: measure it with "
                     "`python bench/throughput.py ratio` on a GPU host (README, Performance)")
    else:
        mu = 1 / s_page
        workers = math.ceil(n / (utilization * mu))
        compute = {"device": "cpu", "workers": workers, "cores": workers, "s_per_page": round(s_page, 3)}
    service_s = 1 / mu  # engine time per page of one worker (a GPU's: at its batched rate)
    # stages and brokers: CPU seconds per page from the measured pipeline point
    cpu = inputs.get("framework", point or {}).get("cpu_s_per_page", {})
    splitters = math.ceil(n * cpu.get("splitter", 0.0) / utilization) or 1
    assemblers = math.ceil(n * cpu.get("assembler", 0.0) / utilization) or 1
    from topology import PAGES_PARTITIONS, RESULTS_PARTITIONS

    pages_parts = max(PAGES_PARTITIONS, _round_up(PARTITION_HEADROOM * workers, 12))
    results_parts = max(RESULTS_PARTITIONS, _round_up(assemblers, 6))
    ingest_parts = max(6, _round_up(splitters, 6))
    if results_parts > RESULTS_PARTITIONS:
        notes.append(f"page-results, assembler-state and document-results need {results_parts} partitions: set "
                     "them before the first document (they cannot be raised later without harm)")
    # bytes written per page, before replication: task, page result, its changelog copy in
    # assembler-state, the document result (about one page result per page)
    doc_b = (point or {}).get("document_result_bytes_per_page", result_b)
    bytes_per_page = task_b + 2 * result_b + doc_b
    write_mb_s = n * bytes_per_page / 1e6
    # The measured 3-broker cluster acknowledged cluster_mb_s of client bytes, 3 copies each: every
    # broker wrote cluster_mb_s. b brokers share 3 x write_mb_s of copies.
    cluster_mb_s = broker["all_partitions"]["mb_per_s"]
    brokers_bytes = math.ceil(3 * write_mb_s / (utilization * cluster_mb_s))
    # brokers' CPU: per MB the clients write (replication included), measured in the flood
    broker_cores_needed = write_mb_s * broker["all_partitions"]["broker_cpu_s_per_mb"]
    brokers_cpu = math.ceil(broker_cores_needed / (utilization * broker_cores))
    brokers = max(3, brokers_bytes, brokers_cpu)
    per_partition_mb_s = n * result_b / 1e6 / results_parts
    if per_partition_mb_s > utilization * broker["one_partition"]["mb_per_s"]:
        notes.append(f"page-results partitions carry {per_partition_mb_s:.1f} MB/s each, above the measured "
                     "one-partition rate: raise page-results partitions")
    # queueing over the workers, latency of one page
    a = n / mu
    rho = a / workers
    p_wait = erlang_c(workers, a)
    wq_s = p_wait / (workers * mu - n) if rho < 1 else float("inf")
    per_worker = n / workers
    batch = min(batch_max_pages, 1 + per_worker * batch_max_wait_ms / 1000)
    hop_ms = broker["latency"]["hop_ms_p50"]
    page_ms = wq_s * 1000 + batch * service_s * 1000 + (batch_max_wait_ms if batch < batch_max_pages else 0) + KAFKA_HOPS * hop_ms
    # a document's pages are spread over min(pages, workers) workers: its last page is
    # ceil(pages / workers) - 1 pages behind its first
    doc_ms = page_ms + (math.ceil(doc_pages / min(doc_pages, workers)) - 1) * service_s * 1000
    lag_q = n * wq_s
    # Little's law: uncommitted pages (the group's lag) = arrival rate x time from publish to commit
    lag_keda = n * (page_ms - KAFKA_HOPS * hop_ms) / 1000
    return {
        "target": {"pages_per_s": n, "dpi": dpi, "utilization": utilization},
        "compute": compute,
        "partitions": {"pages": pages_parts, "page-attempts": pages_parts, "page-results": results_parts,
                       "assembler-state": results_parts, "ingest": ingest_parts, "document-results": results_parts},
        "settings": {"OCRSTREAM_PAGES_PARTITIONS": pages_parts, "keda_max_replicas": pages_parts},
        "stages": {"splitters": splitters, "assemblers": assemblers,
                   "pages_per_s_of_6_assemblers": round(6 * utilization / cpu["assembler"]) if cpu.get("assembler") else None},
        "brokers": {"count": brokers, "by_bytes": brokers_bytes, "by_cpu": brokers_cpu, "cores_each": broker_cores,
                    "write_mb_s_before_replication": round(write_mb_s, 2),
                    "write_mb_s_replicated": round(3 * write_mb_s, 2), "bytes_per_page": round(bytes_per_page),
                    "cores_needed": round(broker_cores_needed, 2)},
        "queueing": {"worker_utilization": round(rho, 3), "p_wait": round(p_wait, 3),
                     "queue_wait_ms": round(wq_s * 1000, 1), "lag_pages_waiting": round(lag_q, 1),
                     "lag_pages_keda_sees": round(lag_keda, 1),
                     "keda_lag_threshold": math.ceil(mu * backlog_age_s)},
        "latency_ms": {"page": round(page_ms), "document": round(doc_ms), "doc_pages": doc_pages,
                       "batch_pages": round(batch, 2), "kafka_hops": KAFKA_HOPS, "hop_ms_p50": hop_ms},
        "notes": notes,
    }


def predict_point(inputs: dict) -> dict:
    """The model for the measured point, from the other inputs only: ``workers`` one-thread
    workers on this machine's cores, which the brokers, S3 and the other stages share.

    Throughput: the less of the workers' engine rate (``workers`` / time per page) and what the
    cores left after the brokers' idle load do at the CPU a page costs everything (engine, the
    framework run's per-page CPU of splitter, assembler, S3 and the worker's own download and
    publish, the brokers' CPU per MB written). Latency: the burst placed evenly, batches of up to
    ``batch_max_pages`` pages, each page done when its batch is, plus ``KAFKA_HOPS`` hops.
    """
    point, broker = inputs["point"], inputs["broker"]
    s_page, _ = _interp(inputs["engine"]["by_dpi"], point["dpi"], "s_per_page")
    render_s = _interp(inputs["engine"]["by_dpi"], point["dpi"], "render_ms")[0] / 1000
    task_b = _interp(inputs["engine"]["by_dpi"], point["dpi"], "page_task_bytes")[0]
    result_b = _interp(inputs["engine"]["by_dpi"], point["dpi"], "page_result_bytes")[0]
    fw = inputs.get("framework", {}).get("cpu_s_per_page", {})
    overhead = (fw.get("splitter", 0.0) + fw.get("assembler", 0.0) + fw.get("s3", 0.0)
                + max(0.0, fw.get("worker", 0.0) - render_s)  # the engine figure has the render
                + (task_b + 3 * result_b) / 1e6 * broker["all_partitions"]["broker_cpu_s_per_mb"])
    cores = inputs.get("cpus") or 2
    free = max(0.1, cores - broker.get("idle_cpu_cores", 0.0))
    rate = min(point["workers"] / s_page, free / (s_page + overhead))
    slow = point["workers"] / s_page / rate  # > 1: the shared cores, not the workers, bound it
    hop_ms = broker["latency"]["hop_ms_p50"]
    per_worker = [point["pages"] // point["workers"] + (1 if i < point["pages"] % point["workers"] else 0)
                  for i in range(point["workers"])]
    latencies = []
    for k in per_worker:
        t, left = 0.0, k
        while left:
            b = min(point["batch_max_pages"], left)
            t += b * s_page * slow
            latencies += [t * 1000 + KAFKA_HOPS * hop_ms] * b
            left -= b
    return {"pages_per_s": round(rate, 3), "engine_only_pages_per_s": round(point["workers"] / s_page, 3),
            "cpu_s_per_page": round(s_page + overhead, 3), "cores_free_of_idle_brokers": round(free, 2),
            "page_latency_ms": {"p50": _pct(latencies, 0.5), "max": round(max(latencies))}}


def _inputs(path: Path) -> dict:
    if not path.exists():
        sys.exit(f"{path} is missing: run `python bench/capacity.py measure` first")
    return orjson.loads(path.read_bytes())


def cmd_model(args) -> None:
    inputs = _inputs(args.inputs)
    out = plan(inputs, args.pages_per_s, args.dpi, gpu_pages_per_s=args.gpu_pages_per_s,
               utilization=args.utilization, broker_cores=args.broker_cores, doc_pages=args.doc_pages)
    out["inputs"] = {"file": str(args.inputs), "measured_at": inputs["measured_at"]}  # per part
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


def cmd_check(args) -> None:
    inputs = _inputs(args.inputs)
    if "point" not in inputs:
        sys.exit("no measured point in the inputs: run `python bench/capacity.py measure --check-pages 12`")
    pred, meas = predict_point(inputs), inputs["point"]
    out = {"point": {k: meas[k] for k in ("workers", "dpi", "pages", "documents", "batch_max_pages")},
           "predicted": pred, "measured": {"pages_per_s": meas["pages_per_s"], "page_latency_ms": meas["page_latency_ms"]},
           "measured_over_predicted": {"pages_per_s": round(meas["pages_per_s"] / pred["pages_per_s"], 3),
                                       "page_latency_p50": round(meas["page_latency_ms"]["p50"] /
                                                                 pred["page_latency_ms"]["p50"], 3),
                                       "page_latency_max": round(meas["page_latency_ms"]["max"] /
                                                                 pred["page_latency_ms"]["max"], 3)},
           "load_avg_during_point": meas.get("load_avg"),
           "cpu_s_per_page": meas["cpu_s_per_page"]}
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--pages", type=int, default=4, help="scanned pages per DPI for the engine figures")
    m.add_argument("--dpis", default="100,150,200,300")
    m.add_argument("--seconds", type=float, default=5.0, help="length of each broker throughput run")
    m.add_argument("--check-pages", type=int, default=12, help="pages of the pipeline point (0: none)")
    m.add_argument("--framework-pages", type=int, default=60, help="pages of the run without OCR (0: none)")
    m.add_argument("--keep", action="store_true", help="leave the benchmark cluster running")
    m.add_argument("--parts", default=",".join(PARTS),
                   help="what to measure (the rest is kept from the existing inputs file)")
    m.set_defaults(fn=cmd_measure)
    md = sub.add_parser("model")
    md.add_argument("--pages-per-s", type=float, required=True)
    md.add_argument("--dpi", type=int, default=150)
    md.add_argument("--gpu-pages-per-s", type=float, default=None,
                    help="pages/s one GPU worker does (NOT measured on this project yet)")
    md.add_argument("--utilization", type=float, default=UTILIZATION)
    md.add_argument("--broker-cores", type=int, default=4)
    md.add_argument("--doc-pages", type=int, default=10)
    md.set_defaults(fn=cmd_model)
    ck = sub.add_parser("check")
    ck.set_defaults(fn=cmd_check)
    for p in (md, ck):
        p.add_argument("--inputs", type=Path, default=INPUTS)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
