"""Priority lanes (issue 14 item 4): ``DocumentRef.priority``, the ``pages-interactive`` topic,
workers that drain it before the batch topic, per-tenant lane grants.

Units first (lane grants, the batch order, in-flight mark keys), then the real stack: a
module-scoped pipeline (splitter, one OCR worker with the real engine, assembler in threads) with
a batch backlog and one interactive document that must finish while batch pages still wait;
a tenant refused the lane (splitter and gateway); the gateway judging an interactive document
on the interactive lane's backlog; in-flight marks of both page topics restored from the real
``page-attempts`` topic. Every wait is bounded and fails the test when it runs out. Latency
figures are measured by ``bench/lanes.py``, not here.
"""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumers.assembler import Assembler
from consumers.splitter import Splitter, choose_lane
from consumers.worker import OcrWorker
from consumers.worker.attempts import PageAttempts
from consumers.worker.batching import INTERACTIVE_PREPARE_WAIT_S, next_batch
from consumers.worker.items import WorkItem
from ocrstream.cli import build_parser
from ocrstream.engine import create_engine
from ocrstream.errors import OcrstreamError
from ocrstream.kafka import consumer_config, producer_config, topic_partitions
from ocrstream.storage import ObjectStore
from ocrstream.streaming import StopFlag
from producers.publish import DocumentPublisher
from schemas import DocumentRef, DocumentResult, ObjectRef, PageResult, PageTask, decode, encode

from conftest import StageThreads, base_settings, make_pdf, read_topic

BATCH_DOCS, BATCH_PAGES = 8, 4  # the backlog: 32 pages, a minute of OCR or more on a CPU worker


# --------------------------------------------------------------------------- units


def test_lane_grants_default_to_batch_for_named_tenants_and_both_for_the_default_tenant():
    s = base_settings(tenants={"acme": "bkt/acme/", "globex": "bkt/globex/"},
                      tenant_lanes={"globex": ["interactive", "batch"], "-": ["batch"]})
    ref = DocumentRef(document_id="d", source=ObjectRef(bucket="bkt", key="acme/a.pdf", filename="a.pdf"),
                      submitted_at=1, priority="interactive")
    assert choose_lane(s, "globex", ref) == "interactive"
    assert choose_lane(s, "acme", ref.model_copy(update={"priority": None})) == "batch"
    for tenant in ("acme", None):  # acme: not listed, batch only; the default tenant restricted by "-"
        with pytest.raises(OcrstreamError) as e:
            choose_lane(s, tenant, ref)
        assert e.value.code == "lane_not_allowed" and "allowed: batch" in e.value.message
    assert base_settings().lanes_of(None) == ("interactive", "batch")
    with pytest.raises(ValueError):
        base_settings(tenant_lanes={"nobody": ["batch"]})  # not a tenant
    assert build_parser().parse_args(["submit", "--priority", "interactive", "a.pdf"]).priority == "interactive"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "--priority", "urgent", "a.pdf"])


def _item(lane: str, age_s: float, attempts: int = 0) -> WorkItem:
    return WorkItem(msg=None, received=time.monotonic() - age_s, lane=lane, attempts=attempts)


def test_interactive_pages_go_first_alone_and_at_once():
    batch = [_item("batch", 10.0) for _ in range(5)]  # waited long enough: a full batch is due
    inter = [_item("interactive", 0.0), _item("interactive", 0.0)]
    assert next_batch(batch + inter, 4, 200) == inter  # first, without batch pages, without waiting
    assert next_batch(batch + inter, 1, 200) == inter[:1]
    assert next_batch(batch, 4, 200) == batch[:4]
    retried = _item("batch", 0.0, attempts=1)
    assert next_batch([retried, *inter], 4, 200) == inter  # a retried batch page waits for the lane too
    assert next_batch([retried, *batch], 4, 200) == [retried]
    # an interactive page still being rendered keeps the engine free for it, for a bounded time
    assert next_batch(batch, 4, 200, preparing=[_item("interactive", 0.0)]) == []
    assert next_batch(batch, 4, 200, preparing=[_item("interactive", INTERACTIVE_PREPARE_WAIT_S + 1)]) == batch[:4]
    assert next_batch(batch, 4, 200, preparing=[_item("batch", 0.0)]) == batch[:4]


def test_in_flight_mark_keys_name_the_topic_and_read_the_old_format():
    s = base_settings(topic_prefix="x.")
    a = PageAttempts(s)
    assert a.key("x.pages", 3, 120) == "3/120"  # as workers before the lanes wrote it: either version reads it
    assert a.key("x.pages-interactive", 3, 120) == "pages-interactive/3/120"
    assert a.parse_key("3/120") == ("x.pages", 3, 120)
    assert a.parse_key("pages-interactive/3/120") == ("x.pages-interactive", 3, 120)
    assert a.parse_key("profile.p2.pages/0/7") == ("x.profile.p2.pages", 0, 7)
    for junk in ("", "3", "a/b", "/3/4"):
        with pytest.raises(ValueError):
            a.parse_key(junk)
    a.close()


# --------------------------------------------------------------------------- the real stack


def test_in_flight_marks_of_both_page_topics_are_restored_apart(settings):
    s = settings
    p = Producer(producer_config(s))
    marks = {"3/10": 1, "3/11": 2, "pages-interactive/3/10": 2, "pages-interactive/3/12": 1, "3/12": 1}
    for key, n in marks.items():
        p.produce(s.topic("page-attempts"), orjson.dumps({"attempts": n}), key, partition=3)
    p.produce(s.topic("page-attempts"), None, "3/12", partition=3)  # a tombstone: that attempt returned
    p.produce(s.topic("page-attempts"), b"{}", "junk", partition=3)  # unreadable: logged, skipped
    assert p.flush(30) == 0
    pages, inter = s.topic("pages"), s.topic("pages-interactive")
    a = PageAttempts(s)
    try:
        a.restore([(inter, 3)])  # only the topic assigned: the batch lane's marks are another owner's
        assert a.counts == {(inter, 3, 10): 2, (inter, 3, 12): 1}
        a.restore([(pages, 3)])
        assert a.prior(pages, 3, 10) == 1 and a.prior(pages, 3, 11) == 2 and a.prior(pages, 3, 12) == 0
        assert a.prior(inter, 3, 10) == 2, "restoring one topic dropped another topic's marks"
        a.mark([(inter, 3, 12, "d", 1)])
        a.forget([(pages, 3)])
        assert a.counts == {(inter, 3, 10): 2, (inter, 3, 12): 2}
    finally:
        a.close()


@pytest.fixture(scope="module")
def pipeline(stack):
    """One namespace (tenants acme and globex, the gateway tests' API keys; globex granted the
    interactive lane) with splitter, one OCR worker (real engine, 1-page batches, 100 DPI: the
    test waits for one batch-lane page in the engine, not more) and assembler; yields
    ``(settings, worker)``."""
    from test_gateway import _drop_topics, _namespace

    s = _namespace(uuid.uuid4().hex[:8], batch_max_pages=1, render_dpi=100,
                   tenant_lanes={"globex": ["interactive", "batch"]})
    runner = StageThreads()
    runner.start(Splitter(s, StopFlag(install_signals=False)))
    worker = runner.start(OcrWorker(s, engine=create_engine(s), stop=StopFlag(install_signals=False)))
    runner.start(Assembler(s, StopFlag(install_signals=False)))
    deadline = time.monotonic() + 60
    while not (worker.rt.assigned and worker.engine.engine is not None):
        assert time.monotonic() < deadline, "worker not assigned with its engine loaded within 60s"
        time.sleep(0.2)
    yield s, worker
    runner.stop_all()
    assert not runner.errors, f"stage threads raised: {runner.errors}"
    runner.running.clear()
    _drop_topics(s)


def _committed_and_end(s, group: str, topic: str) -> tuple[int, int]:
    """(offsets the group committed, records there are) summed over ``topic``'s partitions."""
    c = Consumer(consumer_config(s, group))
    try:
        tps = [TopicPartition(topic, p) for p in topic_partitions(c, topic)]
        committed = sum(max(0, tp.offset) for tp in c.committed(tps, timeout=10))
        end = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return committed, end
    finally:
        c.close()


def _wait_result(s, topic: str, document_id: str, timeout_s: float) -> DocumentResult:
    c = Consumer(consumer_config(s, f"reader-{uuid.uuid4().hex[:8]}"))
    c.subscribe([topic])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and not m.error() and m.key() == document_id.encode():
                return decode(m.value(), DocumentResult)
    finally:
        c.close()
    pytest.fail(f"no result of {document_id} on {topic} within {timeout_s}s")


def test_an_interactive_page_overtakes_a_batch_backlog(pipeline, tmp_path):
    s, worker = pipeline
    pages_topic, inter_topic = s.topic("pages"), s.topic("pages-interactive")
    batch_ids = []
    with DocumentPublisher(s) as pub:
        for d in range(BATCH_DOCS):
            pdf = tmp_path / f"batch-{d}.pdf"
            pdf.write_bytes(make_pdf([[f"BATCH DOCUMENT {d} PAGE {n}"] for n in range(1, BATCH_PAGES + 1)]))
            batch_ids.append(pub.upload_and_publish(pdf))
    total = BATCH_DOCS * BATCH_PAGES
    deadline = time.monotonic() + 120  # the backlog is being processed: split, and a batch page in the engine
    while not worker.engine.busy or (done := _committed_and_end(s, s.group("worker"), pages_topic))[1] < total:
        assert time.monotonic() < deadline, "batch backlog not split and under way within 120s"
        time.sleep(0.2)
    pdf = tmp_path / "urgent.pdf"
    pdf.write_bytes(make_pdf([["URGENT ONE PAGE LETTER"]]))
    with DocumentPublisher(s) as pub:
        urgent = pub.upload_and_publish(pdf, priority="interactive")
    result = _wait_result(s, s.topic("document-results"), urgent, 120)
    committed, end = _committed_and_end(s, s.group("worker"), pages_topic)
    assert result.status == "succeeded" and "URGENT" in result.pages[0].detections[0].text.upper(), result
    assert end == total and committed <= total // 2, (
        f"the interactive page waited for the batch backlog: {committed} of {total} batch pages done before it")
    # it went through its own topic, and nothing of the batch lane did
    (task,) = [decode(m.value(), PageTask) for m in read_topic(s, inter_topic)]
    assert task.document_id == urgent and task.lane == "interactive"
    page_results = [decode(m.value(), PageResult) for m in read_topic(s, s.topic("page-results"))]
    assert [r.lane for r in page_results if r.document_id == urgent] == ["interactive"]
    assert all(r.lane is None for r in page_results if r.document_id != urgent)
    # the batch lane goes on once the interactive lane is empty (the hold is released)
    deadline = time.monotonic() + 120
    while _committed_and_end(s, s.group("worker"), pages_topic)[0] <= committed:
        assert time.monotonic() < deadline, "batch lane not resumed after the interactive page"
        time.sleep(0.5)


def test_a_tenant_without_the_lane_is_refused(pipeline):
    from test_gateway import HEADERS, running_gateway

    s, _ = pipeline
    store = ObjectStore(s)
    pdf = make_pdf([["TENANT PAGE"]])
    for tenant in ("acme", "globex"):
        store.put_bytes(f"tenants/{tenant}/one.pdf", pdf, "application/pdf")
    # acme is not granted the interactive lane: a reference written past every producer's check
    p = Producer(producer_config(s))
    ref = DocumentRef(document_id=f"acme-{uuid.uuid4().hex[:6]}", submitted_at=int(time.time() * 1000),
                      source=ObjectRef(bucket=s.bucket, key="tenants/acme/one.pdf", filename="one.pdf"),
                      priority="interactive")
    p.produce(s.tenant_topic("acme", "ingest"), encode(ref), ref.document_id)
    assert p.flush(30) == 0
    result = _wait_result(s, s.tenant_topic("acme", "document-results"), ref.document_id, 60)
    assert result.status == "failed" and result.error.code == "lane_not_allowed", result
    letters = [orjson.loads(m.value()) for m in read_topic(s, s.topic("dead-letters"))]
    assert [d["reason"] for d in letters if ref.document_id in (d.get("key") or "")] == ["lane_not_allowed"]
    assert not any(decode(m.value(), PageTask).tenant == "acme" for m in read_topic(s, s.topic("pages-interactive")))
    # the gateway refuses it before anything is stored; globex, granted the lane, gets it
    with running_gateway(s) as gw:
        body = {"bucket": s.bucket, "key": "tenants/acme/one.pdf", "priority": "interactive"}
        r = gw.post("/v1/documents", headers=HEADERS["acme"], json=body)
        assert r.status_code == 403 and r.json()["code"] == "lane_not_allowed", r.text
        r = gw.post("/v1/documents", headers=HEADERS["acme"], json={**body, "priority": "urgent"})
        assert r.status_code == 422, r.text
        r = gw.post("/v1/documents", headers=HEADERS["acme"], files={"file": ("a.pdf", pdf, "application/pdf")},
                    data={"priority": "interactive"})
        assert r.status_code == 403 and r.json()["code"] == "lane_not_allowed", r.text
        r = gw.post("/v1/documents", headers=HEADERS["globex"],
                    json={**body, "key": "tenants/globex/one.pdf"})
        assert r.status_code == 202, r.text
        doc = r.json()["document_id"]
        result = _wait_result(s, s.tenant_topic("globex", "document-results"), doc, 120)
        assert result.status == "succeeded", result
        assert any(decode(m.value(), PageTask).document_id == doc for m in read_topic(s, s.topic("pages-interactive")))
    assert not [o.key for o in store.list("tenants/acme/") if "uploads" in o.key], "a refused upload was stored"


def test_the_gateway_judges_an_interactive_document_on_its_own_lane(stack):
    from test_gateway import HEADERS, _drop_topics, _namespace, _upload, running_gateway

    # No workers: the backlog is what this test puts there. The batch lane is over the limit.
    s = _namespace(uuid.uuid4().hex[:8], gateway_max_backlog_pages=2, gateway_backlog_cache_s=0.2)
    try:
        p = Producer(producer_config(s))
        for _ in range(3):
            p.produce(s.topic("pages"), b"{}", b"k", partition=0)
        assert p.flush(30) == 0
        with running_gateway(s) as gw:
            r = _upload(gw, None, "a.pdf", make_pdf([["A"]]))
            assert r.status_code == 429 and r.json()["code"] == "backlog" and "batch lane" in r.json()["detail"]
            r = _upload(gw, None, "a.pdf", make_pdf([["A"]]), data={"priority": "interactive"})
            assert r.status_code == 202, r.text  # the interactive lane is empty
            metrics = gw.get("/metrics").text
            assert 'ocrstream_gateway_page_backlog{lane="batch",profile="default"} 3.0' in metrics
            assert 'ocrstream_gateway_page_backlog{lane="interactive",profile="default"} 0.0' in metrics
            for _ in range(3):
                p.produce(s.topic("pages-interactive"), b"{}", b"k", partition=0)
            assert p.flush(30) == 0
            deadline = time.monotonic() + 10
            while (r := _upload(gw, None, "a.pdf", make_pdf([["A"]]), data={"priority": "interactive"})
                   ).status_code == 202:
                assert time.monotonic() < deadline, "interactive backlog over the limit but still admitted"
                time.sleep(0.3)
            assert r.status_code == 429 and "interactive lane" in r.json()["detail"], r.text
        assert HEADERS[None]
    finally:
        _drop_topics(s)
