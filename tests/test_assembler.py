"""Assembler against the real broker: completion, bad input, restart with state from the changelog."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from consumers.assembler import (STATE_TOPIC, Assembler, assemble, done_key, ensure_state_topic, page_key,
                                 without_detections)
from ocrstream.streaming import StopFlag
from ocrstream.kafka import consumer_config, make_admin, producer_config
from schemas import DeadLetter, Detection, DocumentResult, EngineInfo, Error, ObjectRef, PageResult, decode, encode

from conftest import REPO, settings_env

pytestmark = pytest.mark.integration

SUBMITTED = 1_700_000_000_000


def page(doc: str, n: int, count: int, failed: bool = False) -> PageResult:
    """A page result with one detection naming its document and page."""
    return PageResult(
        document_id=doc, source=ObjectRef(bucket="ocrstream-test", key=f"uploads/{doc}.pdf", filename=f"{doc}.pdf"),
        page_count=count, page_number=n, status="failed" if failed else "succeeded",
        error=Error(code="engine_error", message="boom") if failed else None,
        width=100, height=50, dpi=150,
        detections=[] if failed else [Detection(text=f"{doc} p{n}", polygon=[[0, 0], [10, 0], [10, 5], [0, 5]],
                                                confidence=0.9)],
        timings_ms={"render_ms": 10.0, "ocr_ms": 20.0}, engine=EngineInfo(name="none"), worker_id="w",
        submitted_at=SUBMITTED, completed_at=SUBMITTED + 1000,
    )


def send(s, records: list[tuple[str | None, bytes]]) -> list[tuple[int, int]]:
    """Produce (key, value) records to page-results; returns their (partition, offset)."""
    p = Producer(producer_config(s))
    where: list[tuple[int, int]] = []
    for key, value in records:
        p.produce(s.topic("page-results"), value, key,
                  on_delivery=lambda err, msg: where.append((msg.partition(), msg.offset())))
        p.flush(10)  # one at a time: keeps the order asserted below
    assert len(where) == len(records)
    return where


def pages(*items: PageResult) -> list[tuple[str, bytes]]:
    return [(r.document_id, encode(r)) for r in items]


class Reader:
    """Reads a topic from the beginning (all partitions, no group)."""

    def __init__(self, s, topic: str):
        self.c = Consumer(consumer_config(s, f"{s.group('test-reader')}"))
        md = self.c.list_topics(topic, timeout=10)
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.topics[topic].partitions])

    def read(self, n: int, timeout_s: float) -> list:
        """Up to ``n`` records, waiting at most ``timeout_s``."""
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            m = self.c.poll(0.2)
            if m is not None and not m.error():
                out.append(m)
        return out

    def close(self):
        self.c.close()


class AssemblerThread:
    """An assembler running in a background thread; ``stop()`` ends it like SIGTERM would."""

    def __init__(self, s):
        self.flag = StopFlag(install_signals=False)
        self.app = Assembler(s, self.flag)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.app.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self):
        self.flag.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "assembler did not stop within 30 s"
        assert self.error is None, repr(self.error)


@pytest.fixture
def assembler_thread():
    started: list[AssemblerThread] = []

    def start(s) -> AssemblerThread:
        started.append(AssemblerThread(s))
        return started[-1]

    yield start
    for a in started:
        if a.thread.is_alive():
            a.flag.set()
            a.thread.join(30)


def results_of(msgs) -> dict[str, DocumentResult]:
    out = {}
    for m in msgs:
        assert m.key().decode() not in out, f"second result for {m.key()}"
        out[m.key().decode()] = decode(m.value(), DocumentResult)
    return out


def test_assemble_pure_function():
    r = assemble([page("d", 2, 2, failed=True), page("d", 1, 2)], SUBMITTED + 5000)
    assert r.status == "failed" and r.error.code == "engine_error" and r.error.message == "page 2: boom"
    assert [p.page_number for p in r.pages] == [1, 2]
    assert r.timings_ms == {"render_ms": 20.0, "ocr_ms": 40.0, "end_to_end_ms": 5000.0}
    assert decode(encode(r), DocumentResult) == r
    slim = without_detections(assemble([page("d", 1, 1)], SUBMITTED))
    assert slim.status == "failed" and slim.error.code == "result_too_large" and slim.pages[0].detections == []


def test_missing_pages_are_looked_for_where_the_placement_put_them():
    from consumers.assembler import Assembler
    from topology import page_partition

    def placed(n: int, placement: list[int]) -> PageResult:
        return page("docP", n, 6).model_copy(update={"placement": placement})

    # page n on placement[(n - 1) % len]: pages 2 and 5 of 6 on [7, 0, 7, 3] are on 0 and 7
    assert Assembler._upstream("docP", {1: placed(1, [7, 0, 7, 3])}, [2, 5], 12) == {0, 7}
    # every placement seen counts (a replayed ingest record may have been placed anew)
    seen = {1: placed(1, [7, 0, 7, 3]), 3: placed(3, [4, 5, 6])}
    assert Assembler._upstream("docP", seen, [2], 12) == {0, 5}
    # a partition that does not exist: all of them, never a wait that cannot end
    assert Assembler._upstream("docP", {1: placed(1, [1, 40])}, [2], 12) == set(range(12))
    # records of older workers carry none: the former consecutive placement
    assert Assembler._upstream("docP", {1: page("docP", 1, 6)}, [2, 3], 12) == {
        page_partition("docP", 2, 12), page_partition("docP", 3, 12)}


def test_a_worker_copies_the_tasks_placement_into_its_result():
    from consumers.worker.items import WorkItem
    from consumers.worker.results import WorkerStats, page_result
    from ocrstream.engine.base import PageOcr
    from ocrstream.settings import Settings
    from schemas import PageTask, decode

    task = PageTask(document_id="docP", source=ObjectRef(bucket="ocrstream-test", key="uploads/docP.pdf", filename="docP.pdf"),
                    page_number=2,
                    page_count=6, kind="pdf", dpi=150, submitted_at=SUBMITTED, placement=[7, 0, 7, 3])
    for ocr in (PageOcr(lines=[], timings_ms={}), RuntimeError("engine failed")):  # succeeded and failed pages
        item = WorkItem(msg=None, received=0.0, task=task, shape=(50, 100))
        out = page_result(Settings(), item, ocr, EngineInfo(name="none"), WorkerStats())
        assert decode(out.value, PageResult).placement == [7, 0, 7, 3]


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_documents_assembled_once_in_page_order(settings, assembler_thread, delivery):
    s = settings.model_copy(update={"delivery": delivery})
    a = [page("docA", 1, 1)]
    b = [page("docB", n, 3) for n in (3, 1, 2)] + [page("docB", 1, 3)]  # out of order, page 1 twice
    c = [page("docC", n, 5, failed=(n == 3)) for n in (5, 2, 4, 1, 3)]
    send(s, pages(*a, *b[:2], *c[:3], *b[2:], *c[3:]))  # interleaved, all before the assembler starts

    reader = Reader(s, s.topic("document-results"))
    app = assembler_thread(s)
    results = results_of(reader.read(3, 60))
    assert set(results) == {"docA", "docB", "docC"}

    ra, rb, rc = results["docA"], results["docB"], results["docC"]
    assert (ra.status, ra.page_count, [p.page_number for p in ra.pages]) == ("succeeded", 1, [1])
    assert (rb.status, rb.page_count, [p.page_number for p in rb.pages]) == ("succeeded", 3, [1, 2, 3])
    assert rb.text() == "docB p1\fdocB p2\fdocB p3"
    assert rb.timings_ms["render_ms"] == 30.0 and rb.timings_ms["ocr_ms"] == 60.0  # the duplicate counted once
    assert rb.timings_ms["end_to_end_ms"] == rb.completed_at - SUBMITTED
    assert rb.source.key == "uploads/docB.pdf" and rb.engine.name == "none" and rb.submitted_at == SUBMITTED
    assert (rc.status, rc.page_count, [p.page_number for p in rc.pages]) == ("failed", 5, [1, 2, 3, 4, 5])
    assert rc.error.code == "engine_error" and rc.error.message.startswith("page 3: ")
    assert [p.status for p in rc.pages] == ["succeeded"] * 2 + ["failed"] + ["succeeded"] * 2

    # Re-sent page results of finished documents produce nothing.
    send(s, pages(*b, *a))
    assert reader.read(1, 4) == []
    reader.close()
    app.stop()
    assert app.app.completed == 3

    md = make_admin(s).list_topics(s.topic(STATE_TOPIC), timeout=10)
    assert len(md.topics[s.topic(STATE_TOPIC)].partitions) == 6
    dlq = Reader(s, s.topic("dead-letters"))
    assert dlq.read(1, 1) == []
    dlq.close()


def test_bad_input_dead_lettered_and_processing_continues(settings, assembler_thread):
    s = settings
    huge_garbage = b"{not json " + b"x" * (70 * 1024)
    violating = orjson.dumps({"schema": "page_result", "schema_version": 1, "document_id": "docBad"})
    wrong_key = encode(page("docF", 1, 1))
    where = send(s, [("docJunk", huge_garbage), ("docBad", violating), ("someone-else", wrong_key)])
    send(s, pages(page("docE", 2, 2), page("docE", 1, 2)))

    app = assembler_thread(s)
    dlq = Reader(s, s.topic("dead-letters"))
    letters = {m.key().decode(): decode(m.value(), DeadLetter) for m in dlq.read(3, 60)}
    dlq.close()
    reader = Reader(s, s.topic("document-results"))
    results = results_of(reader.read(1, 30) + reader.read(1, 2))
    reader.close()
    app.stop()

    assert set(letters) == {"docJunk", "docBad", "someone-else"}
    junk, bad, misrouted = letters["docJunk"], letters["docBad"], letters["someone-else"]
    assert junk.reason == "invalid_json" and junk.value_truncated and len(junk.value) == 64 * 1024
    assert bad.reason == "schema_violation" and bad.document_id == "docBad"
    assert bad.value == violating.decode() and not bad.value_truncated
    assert misrouted.reason == "invalid_key" and misrouted.document_id == "docF"
    for dl, (partition, offset) in zip((junk, bad, misrouted), where):
        assert (dl.topic, dl.partition, dl.offset, dl.stage) == (s.topic("page-results"), partition, offset,
                                                                 "assembler")
    assert set(results) == {"docE"}  # docF's only page was refused, so it has no result
    assert results["docE"].status == "succeeded" and [p.page_number for p in results["docE"].pages] == [1, 2]


def _committed(s, partition: int) -> int:
    c = Consumer(consumer_config(s, s.group("assembler")))
    try:
        return c.committed([TopicPartition(s.topic("page-results"), partition)], timeout=10)[0].offset
    finally:
        c.close()


def test_restart_restores_state_from_changelog(settings, assembler_thread, tmp_path):
    s = settings
    log_path = tmp_path / "assembler-1.log"
    with open(log_path, "wb") as log:
        first = subprocess.Popen([sys.executable, "-m", "ocrstream.cli", "assembler"], env=settings_env(s),
                                 stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        where = send(s, pages(page("docR", 4, 4), page("docR", 2, 4)))
        partition, last = where[-1]
        deadline = time.monotonic() + 60
        while _committed(s, partition) <= last:  # the first assembler consumed (and committed) both pages
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            assert first.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.3)
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0, log_path.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()

    # Pages 2 and 4 are behind the committed offset: only the changelog remembers them.
    send(s, pages(page("docR", 1, 4), page("docR", 2, 4), page("docR", 3, 4)))
    reader = Reader(s, s.topic("document-results"))
    app = assembler_thread(s)
    results = results_of(reader.read(1, 60) + reader.read(1, 3))  # and no second result
    reader.close()
    app.stop()
    assert set(results) == {"docR"}
    r = results["docR"]
    assert r.status == "succeeded" and r.page_count == 4
    assert [p.page_number for p in r.pages] == [1, 2, 3, 4]
    assert r.text() == "docR p1\fdocR p2\fdocR p3\fdocR p4"


def test_complete_document_left_in_state_is_published_on_start(settings, assembler_thread):
    """A crash after the last page was stored but before the result was acknowledged leaves a complete
    document without a done marker in the changelog: the next assembler publishes it without any input."""
    s = settings
    assert ensure_state_topic(s) == 6
    state = s.topic(STATE_TOPIC)
    p = Producer(producer_config(s))
    for n in (1, 2):
        p.produce(state, encode(page("docX", n, 2)), page_key("docX", n), partition=4)
    # a finished document whose page records were not yet tombstoned: no second result, records cleaned up
    p.produce(state, encode(page("docY", 1, 1)), page_key("docY", 1), partition=4)
    p.produce(state, orjson.dumps({"status": "succeeded", "completed_at": int(time.time() * 1000)}),
              done_key("docY"), partition=4)
    assert p.flush(10) == 0

    reader = Reader(s, s.topic("document-results"))
    app = assembler_thread(s)
    results = results_of(reader.read(1, 60) + reader.read(1, 2))
    reader.close()
    states = Reader(s, state)
    records = {m.key().decode(): m.value() for m in states.read(8, 10)}  # 4 written + 1 marker + 3 tombstones
    states.close()
    app.stop()
    assert set(results) == {"docX"} and [q.page_number for q in results["docX"].pages] == [1, 2]
    assert records[page_key("docX", 1)] is None and records[page_key("docX", 2)] is None
    assert records[page_key("docY", 1)] is None
    assert orjson.loads(records[done_key("docX")])["status"] == "succeeded"


def _committed_offset(s, group: str, topic: str, partition: int) -> int:
    c = Consumer(consumer_config(s, group))
    try:
        (tp,) = c.committed([TopicPartition(topic, partition)], timeout=10)
        return tp.offset
    finally:
        c.close()


def test_document_missing_pages_gets_incomplete_result_then_the_complete_one(settings, assembler_thread):
    """Deadline: a document still missing pages gets a failed `incomplete` result with the pages that
    arrived, but only once nothing upstream holds work for it (no false `incomplete` during a backlog);
    the marker survives a restart; a late page replaces the result with the complete one."""
    from topology import page_partition

    s = settings.model_copy(update={"document_deadline_s": 2.0})
    reader = Reader(s, s.topic("document-results"))
    # Backlog: docLag's missing page 2 still waits in `pages` (the worker group has committed nothing).
    pages_part = page_partition("docLag", 2, 12)
    assert pages_part != page_partition("docInc", 2, 12)  # docInc's missing page has no backlog
    p = Producer(producer_config(s))
    p.produce(s.topic("pages"), b"{}", "docLag/2", partition=pages_part)
    assert p.flush(10) == 0
    ((part_i, off_i), (part_b, off_b)) = send(s, pages(page("docInc", 1, 2), page("docLag", 1, 2)))
    app = assembler_thread(s)
    first = results_of(reader.read(1, 60))
    assert set(first) == {"docInc"}, first
    r = first["docInc"]
    assert r.status == "failed" and r.error.code == "incomplete" and "2" in r.error.message
    assert [q.page_number for q in r.pages] == [1]
    # docLag: the assembler has read past its page (committed) and several deadlines passed: still nothing.
    deadline = time.monotonic() + 30
    while _committed_offset(s, s.group("assembler"), s.topic("page-results"), part_b) <= off_b:
        assert time.monotonic() < deadline, "assembler did not commit docLag's page"
        time.sleep(0.5)
    time.sleep(3 * s.document_deadline_s)
    assert reader.read(1, 2) == [], "incomplete declared while the worker group still had docLag's page"
    # The worker group catches up: docLag becomes incomplete too.
    c = Consumer(consumer_config(s, s.group("worker")))
    c.commit(offsets=[TopicPartition(s.topic("pages"), pages_part, 1)], asynchronous=False)
    c.close()
    late = results_of(reader.read(1, 60))
    assert set(late) == {"docLag"} and late["docLag"].error.code == "incomplete"
    # Restart: the `inc/` markers come back with the state, so no second incomplete result.
    app.stop()
    app = assembler_thread(s)
    time.sleep(3 * s.document_deadline_s)
    assert reader.read(1, 2) == [], "a restarted assembler published `incomplete` again"
    # The late page completes docInc: the complete result replaces the incomplete one.
    send(s, pages(page("docInc", 2, 2)))
    done = results_of(reader.read(1, 60))
    reader.close()
    app.stop()
    assert done["docInc"].status == "succeeded" and [q.page_number for q in done["docInc"].pages] == [1, 2]
    assert m_incomplete_total() >= 2


def m_incomplete_total() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("ocrstream_documents_incomplete_total") or 0.0
