"""Drop-folder watcher: exactly once per object version, across restarts."""

from __future__ import annotations

import pytest

from ocrstream.streaming import StopFlag
from producers.publish import DocumentPublisher, stable_document_id
from producers.watch import DropFolderWatcher
from schemas import DocumentRef, decode

from conftest import committed_to_end, consume_all, make_pdf

pytestmark = pytest.mark.integration


def _ingest(settings, n, timeout_s=10, up_to=False):
    return [decode(m.value(), DocumentRef)
            for m in consume_all(settings, settings.topic("ingest"), n, timeout_s, up_to=up_to)]


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

    # scan_once returns after its transactions committed: nothing else can still be on its way
    refs = _ingest(settings, 4, timeout_s=10, up_to=True)
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


# --- events mode: S3 bucket notifications from a real MinIO, through the test broker ---------------


def _published(trigger: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("ocrstream_watch_published_total", {"trigger": trigger}) or 0.0


def _wait_for(cond, timeout_s: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_events_mode_publishes_each_created_object_version_once(minio, stages):
    """Objects put after the start listing reach the ingest topic through MinIO's Kafka
    notifications alone (no rescan), once per version, and a restarted watcher repeats nothing."""
    from minio.versioningconfig import ENABLED, VersioningConfig

    from ocrstream.storage import ObjectStore

    s = minio.model_copy(update={"watch_rescan_s": 0})  # listing at start only: the rest must be events
    store = ObjectStore(s)
    store.client.set_bucket_versioning(s.bucket, VersioningConfig(ENABLED))
    events0, scans0 = _published("event"), _published("scan")
    w = stages.start(DropFolderWatcher(s, StopFlag(install_signals=False)))
    _wait_for(w.ready, 30, "object-events partitions assigned")

    v1 = store.put_bytes("inbox/a.pdf", make_pdf([["a"]]))
    store.put_bytes("inbox/sub/ü b+c.pdf", make_pdf([["b"]]))  # MinIO URL-encodes this key in the event
    store.put_bytes("elsewhere/c.pdf", make_pdf([["c"]]))  # no event: outside the subscribed prefix
    v2 = store.put_bytes("inbox/a.pdf", make_pdf([["a, second version"]]))
    store.client.remove_object(s.bucket, "inbox/sub/ü b+c.pdf")  # a delete marker: no new document
    assert v1.version_id and v2.version_id and v1.version_id != v2.version_id

    refs = _ingest(s, 3, timeout_s=30)
    assert sorted(r.source.key for r in refs) == ["inbox/a.pdf", "inbox/a.pdf", "inbox/sub/ü b+c.pdf"]
    assert {r.source.version_id for r in refs if r.source.key == "inbox/a.pdf"} == {v1.version_id, v2.version_id}
    assert len({r.document_id for r in refs}) == 3
    assert _published("event") - events0 == 3 and _published("scan") - scans0 == 0
    _wait_for(lambda: committed_to_end(s, s.group("watch"), s.topic("object-events")), 30,
              "event offsets committed")
    stages.stop(w)

    # A restarted watcher (checkpoint + committed offsets) publishes nothing again, and neither
    # does a replay of every event (a new consumer group reads the topic from the start).
    w2 = stages.start(DropFolderWatcher(s, StopFlag(install_signals=False)))
    replay = DropFolderWatcher(s.model_copy(update={"group_prefix": s.group_prefix + "replay."}),
                               StopFlag(install_signals=False))
    replay.rt.start()  # subscribe; its loop is driven by hand below
    _wait_for(lambda: replay.consume_events_once(2.0) == [] and replay.ready(), 30, "replay")
    stages.stop(w2)
    replay.rt.close()
    assert len(_ingest(s, 4, timeout_s=8, up_to=True)) == 3  # offsets committed to the end above


def test_events_mode_dead_letters_a_record_that_is_not_an_s3_event(minio, stages):
    from confluent_kafka import Producer

    from ocrstream.kafka import producer_config
    from ocrstream.storage import ObjectStore
    from schemas import DeadLetter

    s = minio.model_copy(update={"watch_rescan_s": 0})
    w = stages.start(DropFolderWatcher(s, StopFlag(install_signals=False)))
    _wait_for(w.ready, 30, "object-events partitions assigned")
    p = Producer(producer_config(s))
    p.produce(s.topic("object-events"), b"{not json", b"k1", partition=0)
    p.produce(s.topic("object-events"), b'{"EventName": "s3:ObjectCreated:Put", "Records": [{"s3": {}}]}', b"k2",
              partition=0)
    p.flush(10)
    ObjectStore(s).put_bytes("inbox/after.pdf", make_pdf([["after"]]))  # the partition is not stuck

    refs = _ingest(s, 1, timeout_s=30)
    assert [r.source.key for r in refs] == ["inbox/after.pdf"]
    dls = sorted((decode(m.value(), DeadLetter) for m in consume_all(s, s.topic("dead-letters"), 2, 20)),
                 key=lambda d: d.offset)
    assert [(d.reason, d.stage, d.key) for d in dls] == [("invalid_json", "watch", "k1"),
                                                         ("schema_violation", "watch", "k2")]
    assert "eventName" in dls[1].message and dls[1].topic == s.topic("object-events")


def test_events_lost_by_the_notifier_are_found_by_the_fallback_listing(minio, stages):
    """MinIO without a queue directory drops events it cannot deliver; here the subscription
    is removed instead, so no event is ever sent. The periodic listing still finds the object."""
    from ocrstream.storage import ObjectStore

    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = minio.model_copy(update={"watch_rescan_s": 1.0, "http_port": port})
    store = ObjectStore(s)
    store.client.delete_bucket_notification(s.bucket)
    scans0 = _published("scan")
    w = stages.start(DropFolderWatcher(s, StopFlag(install_signals=False)))
    _wait_for(w.ready, 30, "object-events partitions assigned")
    store.put_bytes("inbox/unannounced.pdf", make_pdf([["x"]]))
    refs = _ingest(s, 1, timeout_s=30)
    assert [r.source.key for r in refs] == ["inbox/unannounced.pdf"]
    assert _published("scan") - scans0 == 1

    # The watcher's own /readyz and /metrics (what compose and k8s probe and scrape).
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'ocrstream_watch_published_total{trigger="scan"}' in text
    assert 'ocrstream_messages_produced_total{stage="watch"' in text


def test_events_mode_kill9_publishes_every_object_exactly_once(minio, processes):
    """The watcher (a real process, events mode) is SIGKILLed while MinIO's events stream in;
    after restarts a read_committed reader sees each object exactly once: event offsets,
    ingest records and checkpoint commit together."""
    import os
    import random
    import signal
    import time

    from ocrstream.storage import ObjectStore

    s = minio.model_copy(update={"watch_rescan_s": 0})  # start listing only: the rest is events
    store = ObjectStore(s)
    keys = [f"inbox/doc-{i:02d}.pdf" for i in range(30)]
    pdf = make_pdf([["x"]])
    rng = random.Random(7)
    watcher = processes.start(s, "watch")
    kills = 0
    for i, key in enumerate(keys):  # bounded: 30 puts, a kill after every 7th
        store.put_bytes(key, pdf)
        time.sleep(rng.uniform(0.2, 0.6))  # ~3 s between kills: some land mid-batch
        if i % 7 == 6:
            os.kill(watcher.pid, signal.SIGKILL)
            watcher.wait(10)
            kills += 1
            watcher = processes.start(s, "watch")
    assert kills == 4
    assert len(_ingest(s, len(keys), timeout_s=60)) == len(keys), open(watcher.log_path).read()[-3000:]
    # and nothing more arrives: checked once the watcher has committed every event
    _wait_for(lambda: committed_to_end(s, s.group("watch"), s.topic("object-events")), 60, "event offsets committed")
    refs = _ingest(s, len(keys) + 1, timeout_s=10, up_to=True)
    assert sorted(r.source.key for r in refs) == keys
