"""Drop-folder watcher: exactly once per object version, across restarts."""

from __future__ import annotations

import pytest

from consumers.common import StopFlag
from producers.publish import DocumentPublisher, stable_document_id
from producers.watch import DropFolderWatcher
from schemas import DocumentRef, decode

from conftest import consume_all, make_pdf

pytestmark = pytest.mark.integration


def _ingest(settings, n, timeout_s=10):
    return [decode(m.value(), DocumentRef) for m in consume_all(settings, settings.topic("ingest"), n, timeout_s)]


def test_each_object_version_is_published_once_across_restarts(settings, store):
    store.put_bytes("inbox/a.pdf", make_pdf([["a"]]))
    store.put_bytes("inbox/sub/ü b.pdf", make_pdf([["b"]]))
    store.put_bytes("elsewhere/c.pdf", make_pdf([["c"]]))  # outside the drop folder

    w = DropFolderWatcher(settings, StopFlag(install_signals=False))
    first = w.scan_once()
    assert len(first) == 2
    assert w.scan_once() == []  # nothing new

    # a restarted watcher reads its checkpoint and publishes nothing again
    w2 = DropFolderWatcher(settings, StopFlag(install_signals=False))
    assert w2.scan_once() == []

    # a new version of an object is a new document
    store.put_bytes("inbox/a.pdf", make_pdf([["a, second version"]]))
    second = w2.scan_once()
    assert len(second) == 1 and second[0] not in first

    refs = _ingest(settings, 4, timeout_s=10)
    assert len(refs) == 3, [r.source.key for r in refs]
    assert sorted(r.source.key for r in refs) == ["inbox/a.pdf", "inbox/a.pdf", "inbox/sub/ü b.pdf"]
    for r in refs:
        assert r.document_id == stable_document_id(r.source.bucket, r.source.key, r.source.etag, r.source.version_id)
        assert r.source.filename in ("a.pdf", "ü b.pdf")


def test_publish_library_refuses_oversized_reference_and_missing_objects(settings, store):
    from ocrstream.errors import OcrstreamError

    small = settings.model_copy(update={"max_message_bytes": 300})
    long_key = "uploads/" + "/".join(["k" * 60] * 5) + ".pdf"
    store.put_bytes(long_key, make_pdf([["x"]]))
    with DocumentPublisher(small) as pub:
        with pytest.raises(OcrstreamError) as e:
            pub.publish_object(settings.bucket, long_key)
        assert e.value.code == "message_too_large"
        with pytest.raises(OcrstreamError) as e:
            pub.publish_object(settings.bucket, "uploads/nope.pdf")
        assert e.value.code == "object_not_found"
        with pytest.raises(OcrstreamError) as e:
            pub.publish_object(settings.bucket, "uploads/../x.pdf")
        assert e.value.code == "invalid_key"
