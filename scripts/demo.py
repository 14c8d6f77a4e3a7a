"""`make demo`: start the local stack and every consumer, OCR sample and real documents,
print their results and a summary, and leave everything running.

    python scripts/demo.py [FILE...]      # extra files to OCR
    python scripts/demo.py --stop         # stop the consumers and the stack
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devtools.stack import Stack  # noqa: E402
from ocrstream.kafka import make_admin  # noqa: E402
from ocrstream.settings import get_settings  # noqa: E402
from topology import apply_topics, topic_specs  # noqa: E402

SCANS = REPO.parent / "shared" / "data" / "scans-dev"


def _pid_file(s) -> Path:
    return Path(s.stack_dir).resolve() / "run.pid"


def stop() -> None:
    s = get_settings()
    pid_file = _pid_file(s)
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            print("stopping consumers...")
            time.sleep(3)
        except (OSError, ValueError):
            pass
        pid_file.unlink(missing_ok=True)
    Stack(s).down()
    print("stack stopped (data kept under", Path(s.stack_dir).resolve(), ")")


def show_outbox(s, sample: Path, timeout_s: float = 180.0) -> None:
    """Drop ``sample`` into the drop folder and show what the outbox sink writes for it."""
    import pymupdf

    from ocrstream.storage import ObjectStore

    store = ObjectStore(s)
    key = f"{s.inbox_prefix}demo/{sample.name}"
    base = f"{s.outbox_prefix}demo/{sample.name}"
    print(f"\n== drop folder: s3://{s.bucket}/{key} -> the outbox sink writes s3://{s.bucket}/{base}.*")
    store.put_bytes(key, sample.read_bytes())
    deadline = time.monotonic() + timeout_s
    wanted = {base + x for x in (".json", ".txt", ".hocr", ".alto.xml", ".pdf")}
    while time.monotonic() < deadline:
        found = {o.key: o.size for o in store.list(f"{s.outbox_prefix}demo/")}
        if wanted <= found.keys() or base + ".error.json" in found:
            break
        time.sleep(1.0)
    else:
        print(f"   not all outbox files within {timeout_s:.0f}s (see {Path(s.stack_dir).resolve() / 'run.log'})")
    for k, size in sorted(found.items()):
        print(f"   {k:60} {size:>9} bytes")
    if base + ".txt" in found:
        text = store.get_bytes(s.bucket, base + ".txt", 10 << 20).decode()
        print("   .txt: " + " | ".join(text.split("\n")[:6]))
    if base + ".pdf" in found:
        with pymupdf.open(stream=store.get_bytes(s.bucket, base + ".pdf", 200 << 20)) as pdf:
            print(f"   .pdf: {pdf.page_count} page(s), get_text() of page 1: "
                  + " | ".join(pdf[0].get_text().split("\n")[:6]))


ANALYTICS_QUERIES = {
    "pages per day": "SELECT dt, count(*) FILTER (WHERE page_number IS NOT NULL) AS pages, "
                     "count(DISTINCT document_id) AS documents FROM pages GROUP BY dt ORDER BY dt",
    "failures by reason code": "SELECT error_code, count(*) AS n FROM pages WHERE status = 'failed' "
                               "GROUP BY error_code ORDER BY n DESC",
    "latency percentiles (s)": "SELECT round(quantile_cont(latency_ms, 0.5) / 1000, 1) AS p50, "
                               "round(quantile_cont(latency_ms, 0.95) / 1000, 1) AS p95 FROM "
                               "(SELECT DISTINCT document_id, latency_ms FROM pages)",
}


def show_analytics(s, timeout_s: float = 60.0) -> None:
    """Query the analytics sink's Parquet tables with DuckDB, in place in the S3 store."""
    import duckdb
    import pyarrow.dataset as ds

    from consumers.sinks.tables import s3_filesystem
    from ocrstream.storage import ObjectStore

    print(f"\n== analytics: Parquet tables in s3://{s.bucket}/{s.analytics_prefix} (DuckDB over pyarrow's S3 client)")
    deadline = time.monotonic() + timeout_s
    while not ObjectStore(s).list(f"{s.analytics_prefix}pages/") and time.monotonic() < deadline:
        time.sleep(1.0)  # the sink writes every OCRSTREAM_PARQUET_FLUSH_S
    try:
        pages = ds.dataset(f"{s.bucket}/{s.analytics_prefix}pages", filesystem=s3_filesystem(s), format="parquet",
                           partitioning="hive")
        con = duckdb.connect()
        con.register("pages", pages)
        for title, sql in ANALYTICS_QUERIES.items():
            print(f"   {title}: {sql}")
            for row in con.sql(sql).fetchall():
                print("      " + " | ".join(str(v) for v in row))
    except Exception as exc:  # noqa: BLE001 - the demo goes on; the reason is printed
        print(f"   no tables yet ({type(exc).__name__}: {exc})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument("--stop", action="store_true")
    ap.add_argument("--workers", type=int, default=None, help="OCR workers (default: `ocrstream run` chooses)")
    args = ap.parse_args()
    if args.stop:
        stop()
        return 0
    s = get_settings()
    print("== starting the local stack (Kafka KRaft broker + SeaweedFS S3)")
    Stack(s).up()
    specs = topic_specs(retention=s.retention(), tenants=tuple(s.tenants), profiles=tuple(s.profiles),
                        pages_partitions=s.pages_partitions)
    for r in apply_topics(make_admin(s), specs, s.topic_prefix):
        print(f"   topic {r.topic:28} {r.action} {'; '.join(r.drift)}")

    pid_file = _pid_file(s)
    running = False
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), 0)
            running = True
        except (OSError, ValueError):
            pass
    if not running:
        log = Path(s.stack_dir).resolve() / "run.log"
        if args.workers is None:
            from ocrstream.cli import default_workers
            import psutil

            args.workers = default_workers(os.cpu_count() or 1, psutil.virtual_memory().available)
        print(f"== starting consumers: splitter, assembler, {args.workers} OCR workers, drop-folder watcher, outbox and "
              f"analytics sinks (log: {log})")
        # Samples every 2 s instead of 10, so the live view below moves during a short demo.
        env = {"OCRSTREAM_METRICS_INTERVAL_S": "2", "OCRSTREAM_PARQUET_FLUSH_S": "5", **os.environ}
        with open(log, "ab") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "ocrstream.cli", "run", "--workers", str(args.workers)],
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO, env=env)
        pid_file.write_text(str(proc.pid))

    from devtools.samples import make_samples

    sample_dir = Path(s.stack_dir).resolve() / "samples"
    docs = [str(p) for p in make_samples(sample_dir)]
    if SCANS.is_dir():
        docs += sorted(str(p) for p in SCANS.glob("*.pdf"))
    docs += args.files
    print(f"== submitting {len(docs)} documents; live worker figures from the metrics topic until they are done")
    print("   (the same view any time, also over SSH: .venv/bin/ocrstream top)")
    t0 = time.monotonic()
    out_path, err_path = (Path(s.stack_dir).resolve() / f"submit.{x}" for x in ("jsonl", "err"))
    with open(out_path, "wb") as out_fh, open(err_path, "wb") as err_fh:
        submit = subprocess.Popen([sys.executable, "-m", "ocrstream.cli", "submit", "--wait", "--json", "--timeout",
                                   "1800", *docs], stdout=out_fh, stderr=err_fh, cwd=REPO)
        from ocrstream.top import run_top

        seen = run_top(s, until=lambda: submit.poll() is not None)
        submit.wait()
    elapsed = time.monotonic() - t0
    sys.stderr.write(err_path.read_text(errors="replace")[-3000:])
    pages_seen = sum(x.pages for window in seen.values() for x in window)
    print(f"== live view: {len(seen)} workers reported; {pages_seen} pages in their samples of the last minute")
    import orjson

    results = [orjson.loads(line) for line in out_path.read_text().splitlines() if line.strip()]
    pages = 0
    for r in results:
        pages += r["page_count"]
        print(f"\n== {r['source']['filename'] if r['source'] else r['document_id']}: {r['status']}, "
              f"{r['page_count']} page(s)" + (f", error {r['error']['code']}: {r['error']['message']}" if r["error"] else ""))
        for page in r["pages"][:2]:
            lines = [d["text"] for d in page["detections"]]
            print(f"   page {page['page_number']} ({page['width']}x{page['height']} px, {len(lines)} lines): "
                  + " | ".join(lines[:8]) + (" ..." if len(lines) > 8 else ""))
    ok = sum(r["status"] == "succeeded" for r in results)
    print(f"\n== summary: {len(results)} documents ({ok} succeeded), {pages} pages in {elapsed:.1f} s "
          f"= {pages / elapsed:.2f} pages/s with {args.workers} workers")
    # A scan shows the searchable PDF's invisible text layer (born-digital pages keep their own text).
    show_outbox(s, Path(next((d for d in docs if d.endswith("-scan.jpg")), docs[0])))
    show_analytics(s)
    print("   the stack and consumers keep running; stop them with: make stop")
    print("   more: .venv/bin/ocrstream submit --wait FILE...   |   drop files into s3://"
          f"{s.bucket}/{s.inbox_prefix} (S3 at {s.s3_endpoint})")
    return submit.returncode


if __name__ == "__main__":
    sys.exit(main())
