"""Allowed sources (ocrstream/sources.py): a reference outside OCRSTREAM_ALLOWED_SOURCES is refused
with ``forbidden_source`` before anything is read, by the splitter (ingest) and by the worker
(a page task written straight to the pages topic); what is allowed still flows."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.engine import create_engine
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import producer_config
from ocrstream.settings import Settings
from ocrstream.sources import SourceRule, allowed_sources, check_source
from ocrstream.storage import ObjectStore
from ocrstream.streaming import StopFlag, now_ms
from schemas import DeadLetter, DocumentRef, DocumentResult, ObjectRef, PageResult, PageTask, decode, encode

from conftest import consume_all, make_pdf


def _code(s: Settings, bucket: str, key: str) -> str | None:
    try:
        check_source(s, bucket, key)
    except OcrstreamError as exc:
        return exc.code
    return None


def test_default_rules_are_the_upload_and_drop_folders():
    s = Settings(bucket="docs", upload_prefix="uploads", inbox_prefix="inbox/")
    assert allowed_sources(s) == (SourceRule("docs", "uploads/"), SourceRule("docs", "inbox/"))
    assert _code(s, "docs", "uploads/a.pdf") is None and _code(s, "docs", "inbox/sub/b.png") is None
    assert _code(s, "private-hr", "uploads/a.pdf") == ReasonCode.FORBIDDEN_SOURCE  # another bucket
    assert _code(s, "docs", "internal/payroll.pdf") == ReasonCode.FORBIDDEN_SOURCE  # outside the prefixes
    assert _code(s, "docs", "inbox-private/a.pdf") == ReasonCode.FORBIDDEN_SOURCE  # a folder, not a string prefix
    assert _code(s, "docs", "uploadsX/a.pdf") == ReasonCode.FORBIDDEN_SOURCE
    assert _code(s, "docs", "uploads/../internal/a.pdf") == ReasonCode.INVALID_KEY  # never normalised into scope
    assert _code(s, "Bad_Bucket!", "uploads/a.pdf") == ReasonCode.INVALID_BUCKET


def test_configured_rules():
    s = Settings(allowed_sources="scans/2024, archive/ ,docs/in/")
    assert allowed_sources(s) == (SourceRule("scans", "2024/"), SourceRule("archive", ""), SourceRule("docs", "in/"))
    assert _code(s, "archive", "anything/at/all.pdf") is None
    assert _code(s, "scans", "2024/a.pdf") is None and _code(s, "scans", "2025/a.pdf") == ReasonCode.FORBIDDEN_SOURCE
    assert _code(s, "ocrstream", "uploads/a.pdf") == ReasonCode.FORBIDDEN_SOURCE  # the defaults no longer apply
    with pytest.raises(ValueError):
        Settings(allowed_sources="/no-bucket/")


@pytest.mark.integration
def test_references_outside_the_allowed_sources_are_refused_before_any_read(settings, store, stages):
    secret = "SECRET TOKEN 4242"
    other = ObjectStore(settings)
    other_bucket = f"{settings.bucket}-private"
    other.ensure_bucket(other_bucket)
    other.put_bytes("hr/secret.pdf", make_pdf([[secret]]), "application/pdf", bucket=other_bucket)
    store.put_bytes("internal/payroll.pdf", make_pdf([[secret]]), "application/pdf")
    store.put_bytes("inbox-private/x.pdf", make_pdf([[secret]]), "application/pdf")
    store.put_bytes("uploads/ok.pdf", make_pdf([["ALLOWED TEXT"]]), "application/pdf")

    refs = {"other-bucket": (other_bucket, "hr/secret.pdf"), "outside-prefix": (settings.bucket, "internal/payroll.pdf"),
            "sibling-folder": (settings.bucket, "inbox-private/x.pdf"), "ok": (settings.bucket, "uploads/ok.pdf")}
    p = Producer(producer_config(settings))
    for doc_id, (bucket, key) in refs.items():
        ref = DocumentRef(document_id=doc_id, submitted_at=now_ms(),
                          source=ObjectRef(bucket=bucket, key=key, filename=key.rsplit("/", 1)[-1]))
        p.produce(settings.topic("ingest"), encode(ref), doc_id)
    # A page task forged straight onto the pages topic (a writer that bypasses the splitter).
    forged = PageTask(document_id="forged", source=ObjectRef(bucket=other_bucket, key="hr/secret.pdf",
                                                              filename="secret.pdf"),
                      page_number=1, page_count=1, kind="pdf", dpi=72, submitted_at=now_ms())
    p.produce(settings.topic("pages"), encode(forged), b"forged/1")
    assert p.flush(30) == 0

    reads: list[tuple[str, str]] = []

    def recorded(get_bytes):
        def get(bucket, key, *args, **kwargs):
            reads.append((bucket, key))
            return get_bytes(bucket, key, *args, **kwargs)
        return get

    splitter = Splitter(settings, StopFlag(install_signals=False))
    worker = OcrWorker(settings, engine=create_engine(settings), stop=StopFlag(install_signals=False))
    for s3 in (splitter.store, worker.fetch.cache.store):  # every object read of both stages
        s3.get_bytes = recorded(s3.get_bytes)
    stages.start(splitter)
    stages.start(worker)

    refused = {"other-bucket", "outside-prefix", "sibling-folder"}
    results = {m.key().decode(): decode(m.value(), DocumentResult)
               for m in consume_all(settings, settings.topic("document-results"), len(refused), 120)}
    for doc_id in refused:
        assert results[doc_id].status == "failed" and results[doc_id].error.code == "forbidden_source", results[doc_id]
    dead = {d.key: d for d in (decode(m.value(), DeadLetter)
                               for m in consume_all(settings, settings.topic("dead-letters"), len(refused), 60))}
    assert {dead[k].reason for k in refused} == {"forbidden_source"} and {dead[k].stage for k in refused} == {"splitter"}
    pages = {r.document_id: r for r in (decode(m.value(), PageResult)
                                         for m in consume_all(settings, settings.topic("page-results"), 2, 120))}
    assert pages["forged"].status == "failed" and pages["forged"].error.code == "forbidden_source"
    assert pages["ok"].status == "succeeded" and "ALLOWED" in " ".join(d.text for d in pages["ok"].detections)
    # Nothing outside the allowed sources was read, and the secret text is nowhere in the outputs.
    assert set(reads) == {(settings.bucket, "uploads/ok.pdf")}, reads  # the splitter's and the worker's read
    assert all(secret not in " ".join(d.text for d in r.detections) for r in pages.values())
