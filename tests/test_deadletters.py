"""`ocrstream dlq list|replay`: dead letters are listed and re-driven after a fix."""

from __future__ import annotations

import pytest

from ocrstream.streaming import StopFlag, now_ms
from consumers.deadletters import list_dead_letters, replay_dead_letters
from consumers.splitter import Splitter
from schemas import DocumentRef, DocumentResult, ObjectRef, PageTask, decode, encode

from conftest import consume_all, make_pdf

pytestmark = pytest.mark.integration


def test_replay_after_fix_processes_the_document(settings, store, stages):
    from confluent_kafka import Producer

    from ocrstream.kafka import producer_config

    ref = DocumentRef(document_id="late", submitted_at=now_ms(),
                      source=ObjectRef(bucket=settings.bucket, key="uploads/late.pdf", filename="late.pdf"))
    p = Producer(producer_config(settings))
    p.produce(settings.topic("ingest"), encode(ref), b"late")
    p.produce(settings.topic("ingest"), b"not json at all", b"junk")
    p.flush(10)
    stages.start(Splitter(settings, StopFlag(install_signals=False)))
    (failed,) = consume_all(settings, settings.topic("document-results"), 1, 60)
    assert decode(failed.value(), DocumentResult).error.code == "object_not_found"

    dls = list_dead_letters(settings)
    assert sorted(d.reason for d in dls) == ["invalid_json", "object_not_found"]
    assert {d.key for d in dls} == {"late", "junk"}

    store.put_bytes("uploads/late.pdf", make_pdf([["arrived late"], ["two"]]))  # the fix
    assert replay_dead_letters(settings, reason="object_not_found") == 1
    tasks = consume_all(settings, settings.topic("pages"), 2, 60)
    assert sorted(decode(m.value(), PageTask).page_number for m in tasks) == [1, 2]
    # replay commits its position: a second replay re-drives nothing
    assert replay_dead_letters(settings, reason="object_not_found") == 0
