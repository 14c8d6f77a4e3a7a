"""Splitter + OCR worker against the real broker and object store (no assembler here)."""

from __future__ import annotations

import time

import orjson
import pytest

from ocrstream.streaming import StopFlag
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.engine.null import NullEngine
from producers.publish import DocumentPublisher
from schemas import PageResult, PageTask, decode

from conftest import consume_all, engine_name, make_pdf

pytestmark = pytest.mark.integration


def test_pdf_pages_are_split_rendered_and_recognized(settings, store, stages, tmp_path):
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(make_pdf([["INVOICE 2024-117", "Total due: 1,250.00 EUR"], ["Second page here"]]))
    with DocumentPublisher(settings) as pub:
        doc_id = pub.upload_and_publish(pdf)

    stages.start(Splitter(settings, StopFlag(install_signals=False)))
    stages.start(OcrWorker(settings, stop=StopFlag(install_signals=False)))

    tasks = [decode(m.value(), PageTask) for m in consume_all(settings, settings.topic("pages"), 2)]
    assert sorted(t.page_number for t in tasks) == [1, 2]
    assert {t.page_count for t in tasks} == {2} and {t.dpi for t in tasks} == {150}
    assert all(t.source.filename == "letter.pdf" for t in tasks)

    msgs = consume_all(settings, settings.topic("page-results"), 2, timeout_s=120)
    results = sorted((decode(m.value(), PageResult) for m in msgs), key=lambda r: r.page_number)
    assert [m.key().decode() for m in msgs] == [doc_id, doc_id]
    first = results[0]
    assert first.status == "succeeded" and first.document_id == doc_id
    # 595 x 842 pt at 150 DPI = 1239.6 x 1754.2 px; MuPDF rounds the pixmap bounds outward
    assert (first.width, first.height, first.dpi) == (1240, 1755, 150)
    texts = [d.text for d in first.detections]
    assert any("INVOICE" in t and "2024-117" in t for t in texts), texts
    assert any("1,250.00" in t for t in texts), texts
    for d in first.detections:
        xs = [p[0] for p in d.polygon]
        ys = [p[1] for p in d.polygon]
        assert 0 <= min(xs) < max(xs) <= first.width and 0 <= min(ys) < max(ys) <= first.height
        assert 0.5 <= d.confidence <= 1.0
    # reading order: the title line comes before the total line
    assert texts.index(next(t for t in texts if "INVOICE" in t)) < texts.index(next(t for t in texts if "1,250.00" in t))
    assert "Second page" in " ".join(d.text for d in results[1].detections)
    assert first.engine.name == engine_name(settings) and first.engine.det_model == "PP-OCRv6_det_small"


def test_invalid_page_task_is_dead_lettered_and_partition_keeps_flowing(settings, store, stages):
    from confluent_kafka import Producer

    from ocrstream.kafka import producer_config

    p = Producer(producer_config(settings))
    # every pages partition gets garbage, so whichever one the valid task lands on was blocked
    for part in range(12):
        p.produce(settings.topic("pages"), b"{not json", b"bad", partition=part)
    p.produce(settings.topic("pages"), orjson.dumps({"schema": "page_task", "schema_version": 1}), b"bad2")
    p.flush(10)
    stages.start(OcrWorker(settings, engine=NullEngine(), stop=StopFlag(install_signals=False)))
    dls = [orjson.loads(m.value()) for m in consume_all(settings, settings.topic("dead-letters"), 13)]
    reasons = sorted(d["reason"] for d in dls)
    assert reasons == ["invalid_json"] * 12 + ["schema_violation"]
    assert all(d["stage"] == "worker" and d["topic"] == settings.topic("pages") for d in dls)

    # a valid document afterwards still goes through
    pdf = make_pdf([["after the garbage"]])
    store.put_bytes("uploads/ok.pdf", pdf, "application/pdf")
    with DocumentPublisher(settings) as pub:
        doc_id = pub.publish_object(settings.bucket, "uploads/ok.pdf")
    stages.start(Splitter(settings, StopFlag(install_signals=False)))
    res = consume_all(settings, settings.topic("page-results"), 1)
    assert decode(res[0].value(), PageResult).document_id == doc_id


class _HangingEngine:
    """An engine that never returns within the budget (a hung runtime, e.g. a wedged GPU call)."""

    def __init__(self, seconds: float):
        from schemas import EngineInfo

        self.seconds = seconds
        self.info = EngineInfo(name="hanging", device="cpu")

    def ocr_batch(self, images):
        time.sleep(self.seconds)
        return []


def test_engine_timeout_fails_the_page_commits_it_and_stops_the_worker(settings, store, stages, tmp_path):
    from confluent_kafka import Consumer, TopicPartition

    from ocrstream.kafka import consumer_config

    s = settings.model_copy(update={"page_timeout_s": 0.5, "batch_max_wait_ms": 50})
    pdf = tmp_path / "slow.pdf"
    pdf.write_bytes(make_pdf([["a"]]))
    with DocumentPublisher(s) as pub:
        doc_id = pub.upload_and_publish(pdf)
    stages.start(Splitter(s, StopFlag(install_signals=False)))
    worker = OcrWorker(s, engine=_HangingEngine(3.0), stop=StopFlag(install_signals=False))
    stages.start(worker)
    (msg,) = consume_all(s, s.topic("page-results"), 1, 60)
    result = decode(msg.value(), PageResult)
    assert result.document_id == doc_id and result.status == "failed" and result.error.code == "engine_timeout"
    deadline = time.monotonic() + 30
    while not worker.stop.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.engine_stuck and worker.stop.is_set()
    stages.stop(worker)
    assert type(stages.errors.pop(id(worker))).__name__ == "EngineStuck"  # run() asks for a process restart
    # the timed-out page was committed: a restarted worker does not hang on it again
    (task,) = consume_all(s, s.topic("pages"), 1, 10)
    c = Consumer(consumer_config(s, s.group("worker")))
    (committed,) = c.committed([TopicPartition(task.topic(), task.partition())], timeout=10)
    c.close()
    assert committed.offset == task.offset() + 1


def test_worker_group_on_the_kip848_consumer_protocol(settings, store, stages, tmp_path):
    s = settings.model_copy(update={"kafka_group_protocol": "consumer"})
    pdf = tmp_path / "k.pdf"
    pdf.write_bytes(make_pdf([["one"], ["two"], ["three"]]))
    with DocumentPublisher(s) as pub:
        doc_id = pub.upload_and_publish(pdf)
    stages.start(Splitter(s, StopFlag(install_signals=False)))
    workers = [stages.start(OcrWorker(s, engine=NullEngine(), stop=StopFlag(install_signals=False)))
               for _ in range(2)]
    results = [decode(m.value(), PageResult) for m in consume_all(s, s.topic("page-results"), 3, 60)]
    assert sorted(r.page_number for r in results) == [1, 2, 3] and {r.document_id for r in results} == {doc_id}
    # the broker split the 12 pages partitions between the two members
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(w.rt.assigned for w in workers):
        time.sleep(0.2)
    assert all(w.rt.assigned for w in workers)
    assert not (workers[0].rt.assigned & workers[1].rt.assigned)
    assert len(workers[0].rt.assigned | workers[1].rt.assigned) == 12


def test_pages_of_a_document_go_to_consecutive_partitions(settings, store, stages, tmp_path):
    # 7 pages over the 12-partition pages topic: 7 distinct, consecutive partitions, so each of
    # N workers gets an even share of the document (a hashed key spreads pages only at random).
    from consumers.splitter import PagePlacement

    pdf = tmp_path / "seven.pdf"
    pdf.write_bytes(make_pdf([[f"page {n}"] for n in range(1, 8)]))
    with DocumentPublisher(settings) as pub:
        doc_id = pub.upload_and_publish(pdf)
    splitter = stages.start(Splitter(settings, StopFlag(install_signals=False)))
    msgs = consume_all(settings, settings.topic("pages"), 7)
    placed = {decode(m.value(), PageTask).page_number: m.partition() for m in msgs}
    n = splitter.placement.partitions()
    assert n == 12 and len(set(placed.values())) == 7
    first = placed[1]
    assert placed == {page: (first + page - 1) % n for page in range(1, 8)}
    assert first == PagePlacement(splitter.rt.delivery.producer, settings.topic("pages")).partition(doc_id, 1)
