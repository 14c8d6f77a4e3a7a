"""``ocrstream delete``: a deletion request removes the source object and the result (a tombstone
in the compacted topic), through the real CLI against the real broker and store."""

from __future__ import annotations

import subprocess
import sys

import pytest

from consumers.assembler import Assembler
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.engine.null import NullEngine
from ocrstream.errors import OcrstreamError
from ocrstream.streaming import StopFlag
from producers.publish import DocumentPublisher
from producers.results import ResultFollower, read_latest_results

from conftest import REPO, make_pdf, read_topic, settings_env

pytestmark = pytest.mark.integration


def test_delete_removes_the_object_and_the_result(settings, store, stages, tmp_path):
    follower = ResultFollower(settings)
    ids = {}
    with DocumentPublisher(settings) as pub:
        for name in ("erase.pdf", "keep.pdf"):
            path = tmp_path / name
            path.write_bytes(make_pdf([[name.upper()]]))
            ids[name] = pub.upload_and_publish(path)
    for stage in (Splitter(settings, StopFlag(install_signals=False)), Assembler(settings, StopFlag(install_signals=False)),
                  OcrWorker(settings, engine=NullEngine(), stop=StopFlag(install_signals=False))):
        stages.start(stage)
    results = follower.wait_for(ids.values(), timeout_s=120)
    follower.close()
    erase, keep = results[ids["erase.pdf"]], results[ids["keep.pdf"]]
    assert store.stat(settings.bucket, erase.source.key).size > 0

    proc = subprocess.run([sys.executable, "-m", "ocrstream.cli", "delete", erase.document_id, "no-such-document"],
                          env=settings_env(settings), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # one of the two had no result
    assert f"object s3://{settings.bucket}/{erase.source.key}" in proc.stdout
    assert "no-such-document  no result" in proc.stderr

    with pytest.raises(OcrstreamError) as e:
        store.stat(settings.bucket, erase.source.key)
    assert e.value.code == "object_not_found"
    assert store.stat(settings.bucket, keep.source.key).size > 0  # the other document is untouched
    latest = read_latest_results(settings)
    assert erase.document_id not in latest and keep.document_id in latest
    # The raw topic: the last record of the deleted key is a tombstone (compaction removes the result).
    last = {}
    for m in read_topic(settings, settings.topic("document-results")):
        last[m.key().decode()] = m.value()
    assert last[erase.document_id] is None and last[keep.document_id] is not None
