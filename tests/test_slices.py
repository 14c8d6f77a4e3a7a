"""Page slices of large PDFs (ocrstream/slices.py): the splitter cuts a large document into
one-page PDFs once, and each worker downloads only the page it OCRs."""

from __future__ import annotations

import numpy as np
import pytest
from confluent_kafka import Producer

from consumers.assembler import Assembler
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.documents import open_pdf, render_pdf_page
from ocrstream.engine import create_engine
from ocrstream.kafka import producer_config
from ocrstream.slices import page_pdf, slice_key, wants_slices
from ocrstream.settings import Settings
from ocrstream.streaming import StopFlag
from producers.delete import delete_documents
from producers.publish import DocumentPublisher
from schemas import DocumentResult, PageResult, PageTask, decode, encode

from conftest import consume_all, make_pdf, read_topic

LINES = [["FIRST PAGE ALPHA"], ["SECOND PAGE BRAVO"], ["THIRD PAGE CHARLIE"]]


def test_a_slice_renders_exactly_like_its_page_of_the_document():
    doc = open_pdf(make_pdf(LINES))
    for n in (1, 2, 3):
        part = open_pdf(page_pdf(doc, n))
        assert part.page_count == 1
        assert np.array_equal(render_pdf_page(part, 1, 150, 10**8), render_pdf_page(doc, n, 150, 10**8))


def test_only_large_multi_page_pdfs_are_sliced():
    s = Settings(slice_min_bytes=1000)
    assert wants_slices(s, "pdf", 1000, 2) and not wants_slices(s, "pdf", 999, 2)
    assert not wants_slices(s, "pdf", 10**6, 1) and not wants_slices(s, "image", 10**6, 3)
    assert not wants_slices(s.model_copy(update={"slice_min_bytes": 0}), "pdf", 10**9, 9)


@pytest.mark.integration
def test_workers_download_only_their_pages_slice(settings, store, stages):
    s = settings.model_copy(update={"slice_min_bytes": 1})  # every multi-page PDF
    reads: list[str] = []
    worker = OcrWorker(s, engine=create_engine(s), stop=StopFlag(install_signals=False))
    get_bytes = worker.fetch.cache.store.get_bytes
    worker.fetch.cache.store.get_bytes = lambda bucket, key, *a, **kw: (reads.append(key),
                                                                       get_bytes(bucket, key, *a, **kw))[1]
    with DocumentPublisher(s) as pub:
        store.put_bytes("uploads/big.pdf", make_pdf(LINES), "application/pdf")
        doc_id = pub.publish_object(s.bucket, "uploads/big.pdf")
        store.put_bytes("uploads/other.pdf", make_pdf(LINES[:2]), "application/pdf")
        other = pub.publish_object(s.bucket, "uploads/other.pdf")
    for stage in (Splitter(s, StopFlag(install_signals=False)), worker, Assembler(s, StopFlag(install_signals=False))):
        stages.start(stage)
    results = {m.key().decode(): decode(m.value(), DocumentResult)
               for m in consume_all(s, s.topic("document-results"), 2, 180)}
    texts = [" ".join(d.text for d in p.detections) for p in results[doc_id].pages]
    assert ["ALPHA" in texts[0], "BRAVO" in texts[1], "CHARLIE" in texts[2]] == [True] * 3
    tasks = [decode(m.value(), PageTask) for m in read_topic(s, s.topic("pages"))]
    assert {(t.document_id, t.page_number, t.slice.key) for t in tasks} == {
        (d, n, slice_key(s, None, d, n)) for d, count in ((doc_id, 3), (other, 2)) for n in range(1, count + 1)}
    assert all(t.source.key.startswith("uploads/") for t in tasks)  # the document stays the reference
    assert sorted(reads) == sorted(t.slice.key for t in tasks)  # the worker never read a whole document

    # A page task that names another document's slice is refused, and nothing is read.
    forged = tasks[0].model_copy(update={"document_id": "forged", "slice": next(t.slice for t in tasks
                                                                                if t.document_id == other)})
    p = Producer(producer_config(s))
    p.produce(s.topic("pages"), encode(forged), f"forged/{forged.page_number}")
    assert p.flush(30) == 0
    page = next(decode(m.value(), PageResult) for m in consume_all(s, s.topic("page-results"), 6, 120)
                if decode(m.value(), PageResult).document_id == "forged")
    assert page.status == "failed" and page.error.code == "forbidden_source"
    assert len(reads) == 5

    # A deletion request removes the slices with the document.
    delete_documents(s, [doc_id])
    assert store.list(f"{s.slice_prefix}{doc_id}/") == []
    assert len(store.list(f"{s.slice_prefix}{other}/")) == 2


def test_page_weights_follow_the_ink_and_survive_crafted_lengths():
    # weights (the splitter's placement) grow with a page's stored size, stay within [0.35, 1.65],
    # and a crafted /Length (negative, indirect, not a number) cannot push them out of range
    import re

    import pymupdf

    from ocrstream.documents import open_pdf, page_weights

    data = make_pdf([[f"line {k} of page {n}" for k in range(count)] for n, count in enumerate([30, 1, 15], 1)])
    weights = page_weights(open_pdf(data))
    assert weights[1] < weights[2] < weights[0] and all(0.35 <= w <= 1.65 for w in weights)
    doc = pymupdf.open(stream=data, filetype="pdf")
    contents = [doc[i].get_contents()[0] for i in range(3)]
    spare = doc.get_new_xref()
    doc.update_object(spare, "123456")  # an indirect length pointing at a number
    for xref, value in zip(contents, ["-1000000000", f"{spare} 0 R", "/NotANumber"]):
        doc.xref_set_key(xref, "Length", value)
    crafted = page_weights(doc)
    assert all(0.35 <= w <= 1.65 for w in crafted), crafted
    assert re.fullmatch(r"\d+", doc.xref_object(spare).strip())
