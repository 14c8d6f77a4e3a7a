"""Page ranges per document (``DocumentRef.pages``, ocrstream/page_ranges.py; issue 14 item 5).

Unit tests of the parser and of every producer's early check, then one module-scoped pipeline
against the real broker and S3 server: splitter, worker and assembler in threads, the worker
reading born-digital pages from their text layer (``OCRSTREAM_TEXT_LAYER=auto``: each page says
``PAGE n ...``, so a result shows which pages were really rendered, without OCR time). Through it:
``publish_object(pages=...)``, ``ocrstream submit --pages`` (in process), the gateway over real
HTTP (form field and JSON field), and hostile references written past the producers' checks.
Every wait is bounded and fails the test when it runs out.
"""

from __future__ import annotations

import io
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumers.assembler import Assembler, expected_pages
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.cli import build_parser
from ocrstream.engine.null import NullEngine
from ocrstream.errors import OcrstreamError
from ocrstream.kafka import consumer_config, producer_config
from ocrstream.page_ranges import MAX_SPEC_CHARS, normalize_page_ranges, parse_page_ranges, select_pages
from ocrstream.storage import ObjectStore
from ocrstream.streaming import StopFlag
from producers.publish import DocumentPublisher, stable_document_id
from producers.results import ResultFollower
from producers.submit import submit_files
from schemas import DocumentOptions, DocumentRef, ObjectRef, PageResult, PageTask, decode, encode

from conftest import StageThreads, base_settings, make_pdf

PAGES = 8  # the test document's page count
HOSTILE = {  # spec -> a word of the message that says what is wrong
    "0-2": "numbered from 1", "3-1": "reversed", "1-99999999999": "beyond any document", "a": "not a page",
    "": "empty", "9": "the document has 8 pages", "2-12": "the document has 8 pages",
    "1-3,2-4": "overlap", "1,,2": "not a page", "x" * 100_000: "characters long",
    "1-3" + ",5" * 600: "characters long",
}


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(("spec", "canonical", "pages"), [
    ("1-3,7", "1-3,7", [1, 2, 3, 7]), (" 7 , 1 - 2,3", "1-3,7", [1, 2, 3, 7]), ("5", "5", [5]),
    ("8,1", "1,8", [1, 8]), ("1-8", "1-8", list(range(1, 9))),
])
def test_valid_ranges_parse_to_the_canonical_form(spec, canonical, pages):
    assert normalize_page_ranges(spec) == canonical
    assert select_pages(spec, PAGES) == pages


@pytest.mark.parametrize("spec", list(HOSTILE), ids=lambda s: repr(s)[:20])
def test_hostile_ranges_are_refused_with_a_reason(spec):
    with pytest.raises(OcrstreamError) as e:
        select_pages(spec, PAGES)
    assert e.value.code == "invalid_page_range" and HOSTILE[spec] in e.value.message, e.value.message
    assert len(e.value.message) < 200  # a long input is not echoed back whole


def test_non_strings_and_limits():
    for junk in (None, 3, ["1"], {"a": 1}):
        with pytest.raises(OcrstreamError):
            parse_page_ranges(junk)
    assert parse_page_ranges("1" + " " * (MAX_SPEC_CHARS - 1)) == [(1, 1)]
    assert parse_page_ranges("999999999") == [(999999999, 999999999)]  # no list is built before the count is known


def test_producers_refuse_malformed_ranges_before_anything_is_sent(tmp_path):
    s = base_settings(bucket="pr-unit")
    parser = build_parser()
    assert parser.parse_args(["submit", "--pages", " 3,1-2", "a.pdf"]).pages == "1-3"
    with pytest.raises(SystemExit) as usage:  # a usage error (exit 2), before any connection
        parser.parse_args(["submit", "--pages", "3-1", "a.pdf"])
    assert usage.value.code == 2
    pub = DocumentPublisher(s)
    with pytest.raises(OcrstreamError) as e:
        pub.publish_object(s.bucket, "uploads/x.pdf", pages="0-2")
    assert e.value.code == "invalid_page_range"
    (tmp_path / "a.pdf").write_bytes(b"%PDF")
    with pytest.raises(OcrstreamError):
        pub.upload_and_publish(tmp_path / "a.pdf", pages="a")
    # other pages of one object version are another document; no pages: the id as before
    ids = {stable_document_id("b", "k", "e", pages=p) for p in (None, "1-3", "1-3,7")}
    assert len(ids) == 3 and stable_document_id("b", "k", "e") == stable_document_id("b", "k", "e", None,
                                                                                    DocumentOptions(), None, None)


def test_the_assembler_trusts_no_page_range_it_cannot_read():
    base = dict(document_id="d", source=ObjectRef(bucket="bkt", key="k", filename="k"), page_number=2,
                engine={"name": "none"}, worker_id="w", submitted_at=1, completed_at=2, width=1, height=1)
    assert list(expected_pages(PageResult(**base, page_count=3))) == [1, 2, 3]
    assert expected_pages(PageResult(**base, page_count=4, page_range="1-3,7")) == [1, 2, 3, 7]
    for page_count, page_range in ((3, "1-3,7"), (4, "junk"), (2, "3-1")):
        with pytest.raises(OcrstreamError) as e:
            expected_pages(PageResult(**base, page_count=page_count, page_range=page_range))
        assert e.value.code == "schema_violation"


# --------------------------------------------------------------------------- the real stack


@pytest.fixture(scope="module")
def pipeline(stack):
    """Topics, bucket and an 8-page PDF (``uploads/eight.pdf``, page n says :func:`_line` (n)) of one
    namespace, with splitter, worker (text layer, no OCR engine) and assembler running."""
    from test_gateway import _drop_topics, _namespace  # the gateway tests' namespace: tenants, API keys

    s = _namespace(uuid.uuid4().hex[:8], text_layer="auto")
    ObjectStore(s).put_bytes("uploads/eight.pdf", make_pdf([[_line(n)] for n in range(1, PAGES + 1)]),
                             "application/pdf")
    runner = StageThreads()
    runner.start(Splitter(s, StopFlag(install_signals=False)))
    runner.start(OcrWorker(s, engine=NullEngine(), stop=StopFlag(install_signals=False)))
    runner.start(Assembler(s, StopFlag(install_signals=False)))
    yield s
    runner.stop_all()
    assert not runner.errors, f"stage threads raised: {runner.errors}"
    runner.running.clear()
    _drop_topics(s)


def _line(n: int) -> str:
    """The text of page ``n`` (20 characters or more: the worker's text-layer fast path reads it)."""
    return f"PAGE {n} OF THE PAGE RANGE TEST"


def _page_texts(result) -> dict[int, str]:
    return {p.page_number: " ".join(d.text for d in p.detections) for p in result.pages}


def _records(s, topic: str) -> list:
    """Every record of ``topic`` now (bounded by its high watermarks)."""
    c = Consumer(consumer_config(s, f"{s.group('test')}-{uuid.uuid4().hex[:6]}"))
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}
        c.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        out, left = [], sum(ends.values())
        for _ in range(300):  # bounded: 60 s
            if left <= 0:
                break
            for m in c.consume(100, 0.2):
                if m.error() is None:
                    out.append(m)
                    left -= 1
        assert left <= 0, f"{topic}: {left} records not read within 60 s"
        return out
    finally:
        c.close()


@pytest.mark.integration
def test_only_the_requested_pages_are_ocred_and_hostile_ranges_fail_clearly(pipeline, tmp_path):
    s = pipeline
    # Page results no worker would write, straight onto the assembler's input: a page outside its
    # range, and a range of a billion pages (which must not be enumerated): each a dead letter.
    page = dict(source=ObjectRef(bucket=s.bucket, key="uploads/eight.pdf", filename="eight.pdf"),
                engine={"name": "none"}, worker_id="w", submitted_at=1, completed_at=2, width=1, height=1)
    crafted = {f"c{uuid.uuid4().hex[:12]}": PageResult(**page, document_id="x", page_number=5, page_count=2,
                                                        page_range="1-2"),
               f"c{uuid.uuid4().hex[:12]}": PageResult(**page, document_id="x", page_number=3,
                                                        page_count=999_999_999, page_range="1-999999999")}
    producer = Producer(producer_config(s))
    for doc_id, result in crafted.items():
        producer.produce(s.topic("page-results"), key=doc_id,
                         value=encode(result.model_copy(update={"document_id": doc_id})))
    assert producer.flush(10) == 0
    follower = ResultFollower(s)  # positioned before publishing: no result slips past
    try:
        with DocumentPublisher(s) as pub:
            wanted = pub.publish_object(s.bucket, "uploads/eight.pdf", pages="7, 1-3")
            everything = pub.publish_object(s.bucket, "uploads/eight.pdf")
            # written past the publisher's own check, as any client of the ingest topic can
            hostile = {}
            for spec in HOSTILE:
                ref = DocumentRef(document_id=f"h{uuid.uuid4().hex[:12]}", submitted_at=1, pages=spec,
                                  source=ObjectRef(bucket=s.bucket, key="uploads/eight.pdf", filename="eight.pdf"))
                hostile[pub.publish_ref(ref)] = spec
        results = follower.wait_for([wanted, everything, *hostile], timeout_s=90)
    finally:
        follower.close()

    r = results[wanted]
    assert r.status == "succeeded", r.error
    assert (r.page_count, r.page_range, [p.page_number for p in r.pages]) == (4, "1-3,7", [1, 2, 3, 7])
    assert _page_texts(r) == {n: _line(n) for n in (1, 2, 3, 7)}  # those pages, rendered from the object
    full = results[everything]
    assert full.page_count == PAGES and full.page_range is None and list(_page_texts(full)) == list(range(1, 9))
    assert wanted != everything  # other pages of one object: another document

    for doc_id, spec in hostile.items():
        h = results[doc_id]
        assert (h.status, h.error.code, h.page_count, h.pages) == ("failed", "invalid_page_range", 0, []), spec[:20]
        assert HOSTILE[spec] in h.error.message, (spec[:20], h.error.message)
    letters = [orjson.loads(m.value()) for m in _records(s, s.topic("dead-letters"))]
    by_doc = {d["document_id"]: d for d in letters if d["stage"] == "splitter"}
    assert {doc_id: by_doc[doc_id]["reason"] for doc_id in hostile} == {d: "invalid_page_range" for d in hostile}
    by_doc = {d["document_id"]: d for d in letters if d["stage"] == "assembler"}
    assert {doc_id: by_doc[doc_id]["reason"] for doc_id in crafted} == {d: "schema_violation" for d in crafted}
    # exactly the requested pages became page tasks: 4 of the ranged document, 8 of the full one, none of the hostile
    tasks = [decode(m.value(), PageTask) for m in _records(s, s.topic("pages"))]
    assert sorted(t.page_number for t in tasks if t.document_id == wanted) == [1, 2, 3, 7]
    assert {(t.page_count, t.page_range) for t in tasks if t.document_id == wanted} == {(4, "1-3,7")}
    assert not [t for t in tasks if t.document_id in hostile]


@pytest.mark.integration
def test_submit_and_the_gateway_take_pages(pipeline, tmp_path):
    from test_gateway import HEADERS, running_gateway

    s = pipeline
    doc = tmp_path / "five.pdf"
    doc.write_bytes(make_pdf([[_line(n)] for n in range(1, 6)]))
    out = io.StringIO()  # `ocrstream submit --pages 5,2 --wait --json five.pdf`, in process
    assert submit_files(s, [doc], wait=True, as_json=True, timeout_s=60, pages="5,2", out=out) == 0
    r = orjson.loads(out.getvalue())
    assert (r["page_count"], r["page_range"], [p["page_number"] for p in r["pages"]]) == (2, "2,5", [2, 5])

    with running_gateway(s) as client:
        auth = HEADERS[None]
        up = client.post("/v1/documents", headers=auth, data={"pages": "4-5"},
                         files={"file": ("five.pdf", doc.read_bytes(), "application/pdf")})
        assert up.status_code == 202, up.text
        ref = client.post("/v1/documents", headers=auth, json={"bucket": s.bucket, "key": "uploads/eight.pdf",
                                                               "pages": "8"})
        beyond = client.post("/v1/documents", headers=auth, json={"bucket": s.bucket, "key": "uploads/eight.pdf",
                                                                  "pages": "8-9"})
        assert ref.status_code == 202 and beyond.status_code == 202, (ref.text, beyond.text)
        for spec in ("3-1", "", "a", "x" * 5000):  # malformed: refused before anything is stored or published
            for bad in (client.post("/v1/documents", headers=auth, data={"pages": spec},
                                    files={"file": ("five.pdf", doc.read_bytes(), "application/pdf")}),
                        client.post("/v1/documents", headers=auth, json={"bucket": s.bucket,
                                                                         "key": "uploads/eight.pdf", "pages": spec})):
                assert bad.status_code == 422 and bad.json()["code"] == "invalid_page_range", (spec[:10], bad.text)
        done = {}
        deadline = time.monotonic() + 60
        for doc_id in (up.json()["document_id"], ref.json()["document_id"], beyond.json()["document_id"]):
            while (body := client.get(f"/v1/documents/{doc_id}", headers=auth).json())["status"] == "pending":
                assert time.monotonic() < deadline, f"no result for {doc_id} within 60 s"
                time.sleep(0.2)
            done[doc_id] = body
    u, one, over = done.values()
    assert [p["page_number"] for p in u["result"]["pages"]] == [4, 5] and u["page_count"] == 2
    assert [p["page_number"] for p in one["result"]["pages"]] == [8] and one["result"]["page_range"] == "8"
    assert over["status"] == "failed" and over["error"]["code"] == "invalid_page_range"
