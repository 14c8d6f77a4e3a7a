"""Priority lanes: latency of one-page interactive documents behind a batch backlog (not a test).

    python bench/lanes.py [--docs 20] [--interval 3] [--backlog-pages 1000] [--workers 1]
                          [--batch-max-pages 8] [--port-offset 0]

Runs every stage as its own process (``bench/throughput.py``'s ``Pipeline``: splitter,
assembler, ``--workers`` OCR workers, the real engine) on a local stack of its own
(``devtools.stack``; ports moved by ``--port-offset``, or ``OCRSTREAM_BENCH_PORT_OFFSET``, so
runs of several checkouts do not meet). Then, one after the other (each submitted once the
previous one finished, at most one every ``--interval`` seconds), ``--docs`` one-page
interactive documents (``priority: interactive``; page 1 of the first scanned court filing of
``../shared/data/scans-dev``, or a generated sample page) are timed from ``submitted_at`` to
the document result's ``completed_at``:

1. ``idle``: nothing else in the pipeline;
2. ``backlog``: after ``--backlog-pages`` pages of batch documents (the scanned filings,
   published again and again under new document ids) were split into the pages topic and OCR of
   them started; the backlog must still be pending when the last interactive document is done
   (``backlog_pending_at_end``), else the run says ``"backlog_drained": true``.

Prints one JSON line per phase (``p50_ms``, ``p99_ms``: with 20 documents p99 is the slowest;
``ocr_ms_*``: the page's own download + render + OCR time, ``wait_ms_*``: the rest) and one with ``p99_ratio`` = backlog p99 / idle p99 (target <= 2); writes
``bench/out/lanes.json``. A batch page already in the engine is not interrupted, so the backlog
p99 is about the idle p99 plus one batch-lane batch (``--batch-max-pages`` pages); the run
reports the batch lane's pages/s meanwhile to compare. The stack is stopped at the end unless
``--keep-stack``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import OUT, REPO, SCANS, Pipeline, bench_settings, hardware  # noqa: E402

from confluent_kafka import Consumer, TopicPartition  # noqa: E402

from ocrstream.kafka import consumer_config, topic_partitions  # noqa: E402


def settings(port_offset: int, **kw):
    """The bench stack's settings, every port moved by ``port_offset`` (own stack folder too)."""
    o = port_offset
    return bench_settings(kafka_bootstrap_servers=f"127.0.0.1:{39092 + o}", kafka_port=39092 + o,
                          kafka_controller_port=39093 + o, s3_endpoint=f"127.0.0.1:{39433 + o}", s3_port=39433 + o,
                          stack_port_base=41000 + o, stack_dir=REPO / ".ocrstream-bench" / f"lanes-{o}", **kw)


def documents(tmp: Path) -> tuple[bytes, list[tuple[str, bytes]]]:
    """``(one-page interactive document, batch documents [(name, bytes)])``."""
    from ocrstream.slices import page_pdf
    import pymupdf

    if SCANS.is_dir():
        scans = sorted(SCANS.glob("*.pdf"))
    else:
        from devtools.samples import make_samples

        scans = [p for p in make_samples(tmp / "samples") if p.suffix == ".pdf"]
    with pymupdf.open(scans[0]) as doc:
        one = page_pdf(doc, 1)
    return one, [(p.name, p.read_bytes()) for p in scans]


def page_count(data: bytes) -> int:
    import pymupdf

    with pymupdf.open(stream=data, filetype="pdf") as doc:
        return doc.page_count


def committed_and_end(s, group: str, topic: str) -> tuple[int, int]:
    """(offsets ``group`` committed, records there are), summed over ``topic``'s partitions."""
    c = Consumer(consumer_config(s, group))
    try:
        tps = [TopicPartition(topic, p) for p in topic_partitions(c, topic)]
        committed = sum(max(0, tp.offset) for tp in c.committed(tps, timeout=10))
        return committed, sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
    finally:
        c.close()


def interactive_run(s, one: bytes, docs: int, interval_s: float, timeout_s: float) -> list[tuple[int, float]]:
    """``(latency ms, OCR ms)`` of ``docs`` interactive one-page documents, one at a time: latency
    ``completed_at - submitted_at``, OCR the page's own download + render + det + rec time (the
    rest is waiting: for the batch page in the engine, for CPU, for the stages' hops)."""
    from producers.publish import DocumentPublisher
    from producers.results import ResultFollower

    key = f"{s.upload_prefix}lanes/interactive.pdf"
    follower = ResultFollower(s)
    out = []
    try:
        with DocumentPublisher(s) as pub:
            pub.store.put_bytes(key, one, "application/pdf")
        for _ in range(docs):
            t0 = time.monotonic()
            with DocumentPublisher(s) as pub:
                doc_id = pub.publish_object(s.bucket, key, document_id=uuid.uuid4().hex, priority="interactive")
            r = follower.wait_for([doc_id], timeout_s=timeout_s)[doc_id]
            if r.status != "succeeded":
                raise RuntimeError(f"interactive document failed: {r.error}")
            own = sum(r.timings_ms.get(k, 0.0) for k in ("download_ms", "render_ms", "det_ms", "rec_ms"))
            out.append((r.completed_at - r.submitted_at, own))
            time.sleep(max(0.0, interval_s - (time.monotonic() - t0)))
    finally:
        follower.close()
    return out


def summary(phase: str, runs: list[tuple[int, float]], **extra) -> dict:
    lat = sorted(ms for ms, _ in runs)
    own = sorted(o for _, o in runs)
    wait = sorted(ms - o for ms, o in runs)
    return {"phase": phase, "documents": len(lat), "p50_ms": round(statistics.median(lat)),
            "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "max_ms": lat[-1], "min_ms": lat[0],
            "ocr_ms_p50": round(statistics.median(own)), "ocr_ms_max": round(own[-1]),
            "wait_ms_p50": round(statistics.median(wait)), "wait_ms_max": round(wait[-1]), **extra}


def publish_backlog(s, batch: list[tuple[str, bytes]], pages: int) -> int:
    """Publish batch documents (stored once, referenced under new ids) until ``pages`` pages;
    returns the pages published."""
    from producers.publish import DocumentPublisher

    counts = [page_count(data) for _, data in batch]
    total = 0
    with DocumentPublisher(s) as pub:
        keys = []
        for name, data in batch:
            key = f"{s.upload_prefix}lanes/batch/{name}"
            pub.store.put_bytes(key, data, "application/pdf")
            keys.append((key, name))
        i = 0
        while total < pages:
            key, name = keys[i % len(keys)]
            pub.publish_object(s.bucket, key, filename=name, document_id=uuid.uuid4().hex)
            total += counts[i % len(keys)]
            i += 1
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=20, help="interactive documents per phase")
    ap.add_argument("--interval", type=float, default=3.0, help="at most one interactive document per N s")
    ap.add_argument("--backlog-pages", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-max-pages", type=int, default=None, help="OCRSTREAM_BATCH_MAX_PAGES (default 8)")
    ap.add_argument("--port-offset", type=int, default=int(os.environ.get("OCRSTREAM_BENCH_PORT_OFFSET", "0")))
    ap.add_argument("--timeout", type=float, default=900.0, help="per interactive document (s)")
    ap.add_argument("--keep-stack", action="store_true", help="leave the bench stack running")
    args = ap.parse_args()

    extra = {} if args.batch_max_pages is None else {"batch_max_pages": args.batch_max_pages}
    s = settings(args.port_offset, **extra)
    tmp = s.stack_dir / "docs"
    tmp.mkdir(parents=True, exist_ok=True)
    one, batch = documents(tmp)
    pipe = Pipeline(s, args.workers, s.stack_dir / "logs")
    s = pipe.s
    lines = []
    try:
        interactive_run(s, one, max(1, args.workers), 0.0, 600)  # warm-up: engines loaded, partitions assigned
        idle = interactive_run(s, one, args.docs, args.interval, args.timeout)
        lines.append(summary("idle", idle))
        print(orjson.dumps(lines[-1]).decode(), flush=True)

        pages_topic, group = s.topic("pages"), s.group("worker")
        published = publish_backlog(s, batch, args.backlog_pages)
        deadline = time.monotonic() + 900
        while (state := committed_and_end(s, group, pages_topic))[1] < published or state[0] < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"backlog not split and under way within 900 s: {state} of {published}")
            time.sleep(1.0)
        start_committed = state[0]
        t0 = time.monotonic()
        under = interactive_run(s, one, args.docs, args.interval, args.timeout)
        elapsed = time.monotonic() - t0
        committed, end = committed_and_end(s, group, pages_topic)
        batch_s = (committed - start_committed) / elapsed if elapsed else 0.0
        lines.append(summary("backlog", under, backlog_pages=end, backlog_pending_at_end=end - committed,
                             backlog_drained=committed >= end,
                             batch_pages_per_s_meanwhile=round(batch_s, 3)))
        print(orjson.dumps(lines[-1]).decode(), flush=True)
    finally:
        pipe.close()
        if not args.keep_stack:
            from devtools.stack import Stack

            Stack(s).down()
    ratio = {"p99_ratio": round(lines[1]["p99_ms"] / lines[0]["p99_ms"], 2),
             "p50_ratio": round(lines[1]["p50_ms"] / lines[0]["p50_ms"], 2), "target": "p99_ratio <= 2",
             "workers": args.workers, "batch_max_pages": s.batch_max_pages, "engine": s.engine,
             "hardware": hardware()}
    lines.append(ratio)
    print(orjson.dumps(ratio).decode(), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "lanes.json").write_bytes(orjson.dumps(lines, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
