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
from ocrstream.documents import open_pdf, page_weights
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


def test_without_workers_the_pages_of_a_document_go_to_consecutive_partitions(settings, store, stages, tmp_path):
    # No worker group to read an assignment from: 7 pages over the 12-partition pages topic go to
    # 7 distinct, consecutive partitions from crc32(document_id), and every task says so.
    from consumers.splitter import PagePlacement
    from topology import page_partition, placed_partition

    pdf = tmp_path / "seven.pdf"
    pdf.write_bytes(make_pdf([[f"page {n}"] for n in range(1, 8)]))
    with DocumentPublisher(settings) as pub:
        doc_id = pub.upload_and_publish(pdf)
    splitter = stages.start(Splitter(settings, StopFlag(install_signals=False)))
    msgs = consume_all(settings, settings.topic("pages"), 7)
    tasks = {decode(m.value(), PageTask).page_number: (m.partition(), decode(m.value(), PageTask)) for m in msgs}
    assert splitter.placement.partitions() == 12 and splitter.placement.members() == []
    assert {n: p for n, (p, _) in tasks.items()} == {n: page_partition(doc_id, n, 12) for n in range(1, 8)}
    assert all(placed_partition(t.placement, n) == p for n, (p, t) in tasks.items())
    assert PagePlacement(splitter.rt.delivery.producer, settings.topic("pages")).place(doc_id, [1.0] * 7) == tasks[1][1].placement


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_pages_are_dealt_over_the_worker_group_members_in_turn(settings, store, stages, tmp_path, protocol):
    # cooperative-sticky hands 2 members partition *ranges* (0-5, 6-11): consecutive partitions
    # would give one member most of a document. The splitter reads the group's assignment and
    # deals pages to the members in turn, across documents.
    from topology import placed_partition

    s = settings.model_copy(update={"kafka_group_protocol": protocol})
    workers = [stages.start(OcrWorker(s, engine=NullEngine(), stop=StopFlag(install_signals=False)))
               for _ in range(2)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
            all(w.rt.assigned for w in workers) and len(workers[0].rt.assigned | workers[1].rt.assigned) == 12
            and not workers[0].rt.assigned & workers[1].rt.assigned):
        time.sleep(0.2)
    owner = {p: i for i, w in enumerate(workers) for (_, p) in w.rt.assigned}
    assert len(owner) == 12, "the two workers did not share the 12 pages partitions"
    docs = {}
    with DocumentPublisher(s) as pub:
        for pages in (7, 5):
            pdf = tmp_path / f"d{pages}.pdf"
            pdf.write_bytes(make_pdf([[f"page {n}"] for n in range(1, pages + 1)]))
            docs[pub.upload_and_publish(pdf)] = pages
    splitter = stages.start(Splitter(s, StopFlag(install_signals=False)))
    msgs = consume_all(s, s.topic("pages"), 12)
    members: dict[str, dict[int, int]] = {d: {} for d in docs}
    for m in msgs:
        task = decode(m.value(), PageTask)
        assert placed_partition(task.placement, task.page_number) == m.partition()
        members[task.document_id][task.page_number] = owner[m.partition()]
    assert sorted(p for parts in splitter.placement.members() for p in parts) == list(range(12))
    for doc_id, pages in docs.items():
        seq = [members[doc_id][n] for n in range(1, pages + 1)]
        assert all(a != b for a, b in zip(seq, seq[1:])), f"pages not dealt in turn: {seq}"
    every = [i for d in members.values() for i in d.values()]
    assert sorted(every.count(i) for i in (0, 1)) == [6, 6]
    # pages of unequal ink: balanced by weight (within one page's weight), not by count
    lines = [30, 1, 1, 30, 30, 1]
    pdf = tmp_path / "uneven.pdf"
    pdf.write_bytes(make_pdf([[f"line {k} of page {n}" for k in range(count)] for n, count in enumerate(lines, 1)]))
    weights = page_weights(open_pdf(pdf.read_bytes()))
    assert max(weights) > 2 * min(weights)
    with DocumentPublisher(s) as pub:
        uneven = pub.upload_and_publish(pdf)
    load = [0.0, 0.0]
    for m in consume_all(s, s.topic("pages"), 18):
        task = decode(m.value(), PageTask)
        if task.document_id == uneven:
            load[owner[m.partition()]] += weights[task.page_number - 1]
    assert abs(load[0] - load[1]) <= max(weights), (load, weights)
    # and the workers did OCR them all
    results = consume_all(s, s.topic("page-results"), 18, 60)
    docs[uneven] = len(lines)
    assert {(r.document_id, r.page_number) for r in (decode(m.value(), PageResult) for m in results)} == {
        (d, n) for d, pages in docs.items() for n in range(1, pages + 1)}
