"""Analytics sink: document results as Parquet tables, each record's rows exactly once."""

from __future__ import annotations

import io
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer

from consumers.sinks.parquet import ParquetSink, compact_closed_days, day, file_name, merge_ranges
from consumers.sinks.tables import PAGES, page_rows
from ocrstream.kafka import producer_config
from ocrstream.streaming import StopFlag
from schemas import DeadLetter, Detection, DocumentResult, EngineInfo, Error, ObjectRef, Page, decode, encode

from conftest import committed_to_end, consume_all

DAY_MS = 86_400_000


def test_ranges_names_and_rows():
    assert merge_ranges([(5, 9), (0, 3), (4, 4), (12, 20), (15, 16)]) == [(0, 9), (12, 20)]
    assert file_name(3, 17, 256) == "p003-00000000000000000017-00000000000000000256.parquet"
    assert day(1795479852433) == "2026-11-24"
    failed = DocumentResult(document_id="x", source=None, status="failed", page_count=0, completed_at=0,
                            error=Error(code="corrupt_document", message="no"))
    rows = page_rows(failed, 2, 7)
    assert rows == [{**rows[0], "page_number": None, "status": "failed", "error_code": "corrupt_document"}]
    assert pa.Table.from_pylist(rows, schema=PAGES).num_rows == 1


def _results(n: int, now_ms: int) -> list[DocumentResult]:
    out = []
    for i in range(n):
        completed = now_ms - (2 + i % 2) * DAY_MS  # two closed days
        pages = [Page(page_number=p, width=1000, height=1400, dpi=150, timings_ms={"det_ms": 10.0 * p, "rec_ms": 5.0},
                      detections=[Detection(text=f"doc {i} page {p} line {k}", confidence=0.9,
                                            polygon=[[0, k], [10, k], [10, k + 5], [0, k + 5]]) for k in range(2)])
                 for p in range(1, 1 + i % 3 + 1)]
        out.append(DocumentResult(
            document_id=f"doc-{i:03d}", source=ObjectRef(bucket="b-x", key=f"uploads/{i}.pdf", filename=f"{i}.pdf"),
            status="succeeded", page_count=len(pages), pages=pages, submitted_at=completed - 5000 - i,
            completed_at=completed, engine=EngineInfo(name="openvino+onnxruntime", det_model="d", rec_model="r")))
    out.append(DocumentResult(document_id="doc-bad", source=None, status="failed", page_count=0,
                              error=Error(code="corrupt_document", message="cannot parse"),
                              completed_at=now_ms - 2 * DAY_MS))
    return out


def _produce(s, results: list[DocumentResult], junk: bool = True) -> None:
    p = Producer(producer_config(s))
    if junk:
        p.produce(s.topic("document-results"), b"{not json", b"junk")
    for r in results:
        p.produce(s.topic("document-results"), encode(r), r.document_id.encode())
    assert p.flush(30) == 0


def _read(store, s, table: str) -> list[dict]:
    keys = [o.key for o in store.list(f"{s.analytics_prefix}{table}/") if o.key.endswith(".parquet")]
    if not keys:
        return []
    tables = [pq.read_table(io.BytesIO(store.get_bytes(s.bucket, k, 1 << 30))) for k in keys]
    return pa.concat_tables(tables).to_pylist()


def _wait_committed(s, group: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not committed_to_end(s, group, s.topic("document-results")):
        assert time.monotonic() < deadline, f"{group} did not commit the results topic's end within {timeout_s}s"
        time.sleep(0.5)


def _assert_once(store, s, results: list[DocumentResult]) -> None:
    pages = _read(store, s, "pages")
    keys = [(r["document_id"], r["page_number"]) for r in pages]
    want = [(r.document_id, p.page_number) for r in results for p in r.pages] + [("doc-bad", None)]
    assert sorted(keys, key=str) == sorted(want, key=str), "each page exactly once"
    dets = _read(store, s, "detections")
    assert len(dets) == sum(len(p.detections) for r in results for p in r.pages)
    assert len({(d["document_id"], d["page_number"], d["line"]) for d in dets}) == len(dets)


@pytest.mark.integration
def test_rows_match_the_results_with_dates_dead_letters_and_duckdb(settings, store, stages):
    s = settings.model_copy(update={"parquet_flush_rows": 3, "parquet_flush_s": 1.0})
    now = int(time.time() * 1000)
    results = _results(9, now)
    _produce(s, results)
    stages.start(ParquetSink(s, StopFlag(install_signals=False)))
    _wait_committed(s, s.group("analytics"))
    _assert_once(store, s, results)
    rows = {(r["document_id"], r["page_number"]): r for r in _read(store, s, "pages")}
    r0 = results[4]
    row = rows[(r0.document_id, 2)]
    assert row["text"] == "doc 4 page 2 line 0\ndoc 4 page 2 line 1" and row["detection_count"] == 2
    assert row["mean_confidence"] == pytest.approx(0.9) and row["det_ms"] == 20.0 and row["text_source"] == "ocr"
    assert row["latency_ms"] == 5004.0 and row["completed_at"].timestamp() * 1000 == r0.completed_at
    assert rows[("doc-bad", None)]["error_code"] == "corrupt_document"
    folders = {o.key.split("/")[2] for o in store.list(f"{s.analytics_prefix}pages/")}
    assert folders == {f"dt={day(now - 2 * DAY_MS)}", f"dt={day(now - 3 * DAY_MS)}"}
    dl = decode(consume_all(s, s.topic("dead-letters"), 1)[0].value(), DeadLetter)
    assert dl.stage == "analytics" and dl.reason == "invalid_json"
    # DuckDB reads the tables as written (files downloaded: no S3 extension needed offline).
    duckdb = pytest.importorskip("duckdb")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        for o in store.list(s.analytics_prefix):
            path = Path(tmp) / o.key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(store.get_bytes(s.bucket, o.key, 1 << 30))
        q = duckdb.sql(f"SELECT dt, count(*) AS pages FROM read_parquet('{tmp}/{s.analytics_prefix}pages/*/*.parquet', "
                       "hive_partitioning = true) WHERE page_number IS NOT NULL GROUP BY dt ORDER BY dt").fetchall()
        assert sum(n for _, n in q) == sum(len(r.pages) for r in results) and len(q) == 2


@pytest.mark.integration
@pytest.mark.chaos
def test_sigkill_between_upload_and_commit_then_compaction_and_replay_keep_each_page_once(settings, store, processes):
    s = settings.model_copy(update={"parquet_flush_rows": 2, "parquet_flush_s": 1.0})
    results = _results(14, int(time.time() * 1000))
    _produce(s, results, junk=False)
    # Killed after the files of its 3rd flush are uploaded, before that flush's offsets are committed.
    first = processes.start(s, "sink parquet", OCRSTREAM_FAULT_POINT="analytics.after_produce:3")
    assert first.wait(120) == -9, "the sink was not killed at the fault point"
    log = open(first.log_path).read()
    assert "fault point analytics.after_produce: SIGKILL" in log
    # Inside the window: a file exists whose range the group has not committed.
    from confluent_kafka import Consumer, TopicPartition

    from ocrstream.kafka import consumer_config, topic_partitions

    c = Consumer(consumer_config(s, s.group("analytics")))
    parts = [TopicPartition(s.topic("document-results"), p) for p in topic_partitions(c, s.topic("document-results"))]
    committed = {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
    c.close()
    files = [o.key.rsplit("/", 1)[1] for o in store.list(f"{s.analytics_prefix}pages/")]
    ranges = [tuple(int(x) for x in f[1:-8].split("-")) for f in files]
    assert any(max(committed[p], 0) <= start for p, start, _ in ranges), (committed, ranges)
    # Restarted with other flush boundaries: the uncommitted range is read again, its rows are not added twice.
    s2 = s.model_copy(update={"parquet_flush_rows": 5})
    processes.start(s2, "sink parquet")
    _wait_committed(s, s.group("analytics"))
    _assert_once(store, s, results)
    # Compaction of the closed days, then a replay of everything by a new group: still once.
    for table in ("pages", "detections"):
        before = {o.key for o in store.list(f"{s.analytics_prefix}{table}/")}
        assert len([k for k in before if k.endswith(".parquet")]) > 2
    reports = compact_closed_days(s)
    assert {r["table"] for r in reports} == {"pages", "detections"} and all(r["merged"] >= 1 for r in reports)
    for dt_folder in {o.key.rsplit("/", 1)[0] for o in store.list(f"{s.analytics_prefix}pages/")}:
        names = sorted(o.key.rsplit("/", 1)[1] for o in store.list(dt_folder + "/"))
        assert names[0] == "_manifest.json" and len(names) == 2 and names[1].startswith("compacted-"), names
    _assert_once(store, s, results)
    replay = s.model_copy(update={"group_prefix": s.group_prefix + "replay."})
    processes.start(replay, "sink parquet")
    _wait_committed(replay, replay.group("analytics"))
    _assert_once(store, s, results)
    assert all(r["merged"] == 0 for r in compact_closed_days(s))  # the replay added nothing to merge
