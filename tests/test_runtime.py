"""The stage runtime's failure policy against the real broker and object store.

Each hostile record must end as a dead letter and/or a ``failed`` result with its reason
code, and 20 valid documents published right after it must all complete: one bad record
never stops the pipeline.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from consumers.assembler import Assembler
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.engine.null import NullEngine
from ocrstream.streaming import StopFlag
from producers.publish import DocumentPublisher
from producers.results import read_latest_results
from schemas import DeadLetter, DocumentRef, ObjectRef, decode

from conftest import consume_all
from fault_engines import MARKER_SIZE

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parent
N_VALID = 20


def _png(size=(200, 80), text_color=0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 255 - text_color).save(buf, "PNG")
    return buf.getvalue()


def _corrupt_tiff() -> bytes:
    """A 2-page TIFF whose first IFD's next-IFD pointer points past the end of the file."""
    buf = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buf, "TIFF", save_all=True, append_images=[Image.new("L", (64, 64), 0)])
    data = bytearray(buf.getvalue())
    assert data[:2] == b"II"
    first = int.from_bytes(data[4:8], "little")
    entries = int.from_bytes(data[first:first + 2], "little")
    at = first + 2 + 12 * entries
    data[at:at + 4] = (len(data) + 10_000).to_bytes(4, "little")
    return bytes(data)


def _publish_valid(s, store, n: int = N_VALID) -> set[str]:
    ids = set()
    with DocumentPublisher(s) as pub:
        for i in range(n):
            key = f"uploads/valid-{i}.png"
            store.client.put_object(s.bucket, key, io.BytesIO(_png()), len(_png()))
            ids.add(pub.publish_object(s.bucket, key))
    return ids


def _wait_results(s, ids: set[str], timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    latest: dict = {}
    while time.monotonic() < deadline:
        latest = read_latest_results(s, timeout_s=15)
        if ids <= latest.keys():
            return latest
        time.sleep(1)
    pytest.fail(f"{len(ids - latest.keys())} of {len(ids)} documents got no result within {timeout_s}s")


def _dead_letters(s, count: int, timeout_s: float = 60.0) -> list[DeadLetter]:
    msgs = consume_all(s, s.topic("dead-letters"), count, timeout_s)
    assert len(msgs) >= count, f"expected {count} dead letters, got {len(msgs)}"
    return [decode(m.value(), DeadLetter) for m in msgs]


def _threads_pipeline(s, stages):
    flag = lambda: StopFlag(install_signals=False)  # noqa: E731
    stages.start(Splitter(s, flag()))
    stages.start(OcrWorker(s, engine=NullEngine(), stop=flag()))
    stages.start(Assembler(s, flag()))


def test_invalid_bucket_record_is_dead_lettered_and_valid_documents_complete(settings, store, stages):
    s = settings
    with DocumentPublisher(s) as pub:
        bad = pub.publish_ref(DocumentRef(document_id="bad-bucket-doc", submitted_at=int(time.time() * 1000),
                                          source=ObjectRef(bucket="Bad_Bucket!", key="uploads/x.pdf",
                                                           filename="x.pdf")))
    ids = _publish_valid(s, store)
    _threads_pipeline(s, stages)
    results = _wait_results(s, ids | {bad})
    assert results[bad].status == "failed" and results[bad].error.code == "invalid_bucket"
    assert all(results[d].status == "succeeded" for d in ids)
    (dl,) = [d for d in _dead_letters(s, 1) if d.document_id == bad]
    assert dl.stage == "splitter" and dl.reason == "invalid_bucket"
    assert not stages.errors, stages.errors


def test_corrupt_tiff_fails_with_its_code_and_valid_documents_complete(settings, store, stages):
    s = settings
    data = _corrupt_tiff()
    store.client.put_object(s.bucket, "uploads/corrupt.tif", io.BytesIO(data), len(data))
    with DocumentPublisher(s) as pub:
        bad = pub.publish_object(s.bucket, "uploads/corrupt.tif")
    ids = _publish_valid(s, store)
    _threads_pipeline(s, stages)
    results = _wait_results(s, ids | {bad})
    assert results[bad].status == "failed" and results[bad].error.code == "corrupt_document"
    assert all(results[d].status == "succeeded" for d in ids)
    assert not stages.errors, stages.errors


def test_unexpected_exception_becomes_internal_error_and_the_partition_moves_on(settings, store, stages, monkeypatch):
    """A bug (an exception that is no OcrstreamError) in one record's handling: dead letter with
    reason internal_error and the error class, a failed result, no crash loop."""
    import consumers.splitter as splitter_module

    real_inspect = splitter_module.inspect

    def buggy_inspect(data, filename, **kw):
        if filename == "trigger.png":
            raise KeyError("a bug")
        return real_inspect(data, filename, **kw)

    monkeypatch.setattr(splitter_module, "inspect", buggy_inspect)
    s = settings
    store.client.put_object(s.bucket, "uploads/trigger.png", io.BytesIO(_png()), len(_png()))
    with DocumentPublisher(s) as pub:
        bad = pub.publish_object(s.bucket, "uploads/trigger.png")
    ids = _publish_valid(s, store)
    _threads_pipeline(s, stages)
    results = _wait_results(s, ids | {bad})
    assert results[bad].status == "failed" and results[bad].error.code == "internal_error"
    assert "KeyError" in results[bad].error.message
    (dl,) = [d for d in _dead_letters(s, 1) if d.document_id == bad]
    assert dl.reason == "internal_error" and dl.error_class == "KeyError" and dl.stage == "splitter"
    assert all(results[d].status == "succeeded" for d in ids)
    assert not stages.errors, stages.errors


def test_consumers_read_a_newer_minor_version_with_an_added_field(settings, store, stages):
    """Schema evolution: an ingest record with a field today's consumers do not know is processed."""
    import orjson
    from confluent_kafka import Producer

    from ocrstream.kafka import producer_config

    s = settings
    store.client.put_object(s.bucket, "uploads/newer.png", io.BytesIO(_png()), len(_png()))
    ref = {"schema": "document_ref", "schema_version": 1, "document_id": "newer-doc", "submitted_at": 1,
           "sla": "gold",  # added by a newer producer (not `priority`: that field exists now)
           "source": {"bucket": s.bucket, "key": "uploads/newer.png", "filename": "newer.png", "region": "eu"}}
    p = Producer(producer_config(s))
    p.produce(s.topic("ingest"), orjson.dumps(ref), "newer-doc")
    assert p.flush(10) == 0
    _threads_pipeline(s, stages)
    results = _wait_results(s, {"newer-doc"})
    assert results["newer-doc"].status == "succeeded"
    assert results["newer-doc"].source.model_extra.get("region") == "eu"  # passed through, not dropped


@pytest.mark.chaos
@pytest.mark.parametrize("factory,signal_name", [("kill_on_marker", "sigkill"), ("segfault_on_marker", "sigsegv")])
def test_poison_page_fails_with_worker_crash_after_max_attempts(settings, store, stages, processes, tmp_path,
                                                                factory, signal_name):
    """A page whose OCR kills the worker process is attempted OCRSTREAM_MAX_PAGE_ATTEMPTS times
    (its later attempts alone), then fails with worker_crash; the pages that shared its first
    batch and 20 valid documents after it complete."""
    s = settings.model_copy(update={"max_page_attempts": 3, "batch_max_pages": 8, "batch_max_wait_ms": 500})
    fault_log = tmp_path / "faults.log"
    marker = _png(MARKER_SIZE)
    store.client.put_object(s.bucket, "uploads/poison.png", io.BytesIO(marker), len(marker))
    with DocumentPublisher(s) as pub:
        poison = pub.publish_object(s.bucket, "uploads/poison.png")
    ids = _publish_valid(s, store)
    flag = lambda: StopFlag(install_signals=False)  # noqa: E731
    stages.start(Splitter(s, flag()))
    stages.start(Assembler(s, flag()))
    env = {"OCRSTREAM_ENGINE_PLUGIN": f"fault_engines:{factory}", "FAULT_LOG": str(fault_log),
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OCRSTREAM_GROUP_INSTANCE_ID": "poison-worker"}  # static membership: a restart rejoins at once
    worker = processes.start(s, "worker", **env)
    deadline = time.monotonic() + 240
    exits = []
    latest: dict = {}
    while time.monotonic() < deadline:  # the supervisor: restart the worker whenever it dies (bounded)
        if worker.poll() is not None:
            exits.append(worker.returncode)
            assert len(exits) <= 5, f"worker died {len(exits)} times: {exits}"
            worker = processes.start(s, "worker", **env)
        latest = read_latest_results(s, timeout_s=5)
        if (ids | {poison}) <= latest.keys():
            break
        time.sleep(1)
    assert (ids | {poison}) <= latest.keys(), f"missing: {len((ids | {poison}) - latest.keys())}; exits {exits}"
    faults = fault_log.read_text().splitlines()
    assert len(faults) == 3, faults  # exactly max_page_attempts fatal attempts
    assert all(line.split()[1] == signal_name for line in faults)
    assert all(line.endswith("batch=1") for line in faults[1:]), faults  # retries ran alone
    expected_rc = -9 if signal_name == "sigkill" else -11
    assert exits[:3] == [expected_rc] * 3, exits
    assert latest[poison].status == "failed" and latest[poison].error.code == "worker_crash"
    assert all(latest[d].status == "succeeded" for d in ids), {d: latest[d].error for d in ids if latest[d].error}
    assert not stages.errors, stages.errors


class _FakeMsg:
    """The parts of a confluent_kafka.Message the worker reads."""

    def __init__(self, topic, partition, offset, value):
        self._t, self._p, self._o, self._v = topic, partition, offset, value

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v

    def key(self):
        return b"k"

    def error(self):
        return None


def test_batch_of_a_lost_partition_never_moves_its_commit_position(settings):
    """A batch still in the engine when its partition is lost (and assigned again, with the same
    offsets re-read) must not mark those offsets done: the commit would pass a record nobody OCR'd."""
    from confluent_kafka import TopicPartition

    from ocrstream.engine.base import PageOcr
    from schemas import PageTask, encode

    s = settings
    w = OcrWorker(s, engine=NullEngine(), stop=StopFlag(install_signals=False))
    w.engine.load()
    topic = s.topic("pages")
    tp = TopicPartition(topic, 0)
    task = encode(PageTask(document_id="d", source=ObjectRef(bucket=s.bucket, key="uploads/d.png", filename="d.png"),
                           page_number=1, page_count=1, kind="image", submitted_at=1))
    w._on_assign([tp])
    w.rt.assigned.add((topic, 0))
    w._accept(_FakeMsg(topic, 0, 5, task))
    stale = w.fetch.queue.popleft()  # this one went to the engine
    w._on_lost([tp])  # the session was lost mid-batch ...
    w._on_assign([tp])  # ... and the same partition came back: offset 5 is read again
    w._accept(_FakeMsg(topic, 0, 5, task))
    stale.future = None
    stale.shape = (10, 10)
    w._publish([stale], [PageOcr(lines=[], timings_ms={})])
    assert w.tracker.committable() == [], "a result from before the loss moved the commit position"
    fresh = w.fetch.queue.popleft()
    fresh.future, fresh.shape = None, (10, 10)
    w._publish([fresh], [PageOcr(lines=[], timings_ms={})])
    (committed,) = w.rt.consumer.committed([tp], timeout=10)
    assert committed.offset == 6  # only the re-read record's own result commits it
    w.fetch.close()
    w.rt.close()


def test_liveness_fails_when_records_wait_and_the_loop_makes_no_progress(settings, store):
    """A partition left paused while records wait (the broker-restart bug class) turns /healthz
    unhealthy after OCRSTREAM_LIVENESS_TIMEOUT_S, and healthy again once the loop advances."""
    import urllib.error
    import urllib.request

    from confluent_kafka import Producer

    from ocrstream.kafka import producer_config
    from ocrstream.streaming import StageRuntime

    s = settings.model_copy(update={"liveness_timeout_s": 3.0, "http_port": 0, "metrics_interval_s": 0.5})
    p = Producer(producer_config(s))
    for i in range(5):
        p.produce(s.topic("ingest"), b"x", f"k{i}", partition=0)
    assert p.flush(10) == 0
    rt = StageRuntime(s, "probe", [s.topic("ingest")], stop=StopFlag(install_signals=False))
    from ocrstream.streaming.health import HealthServer

    http = HealthServer(0, rt.ready, rt.alive)

    def healthz() -> int:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{http.port}/healthz", timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        rt.pause()  # paused before assignment: assigned partitions come paused
        rt.start()
        deadline = time.monotonic() + 30
        while not rt.assigned and time.monotonic() < deadline:
            rt.poll(0.2)
        assert rt.assigned and healthz() == 200
        deadline = time.monotonic() + 30
        while healthz() == 200 and time.monotonic() < deadline:
            assert rt.poll(0.2) is None  # the loop runs, but fetches nothing
        assert healthz() == 503 and rt.work_waiting()
        rt.resume()
        got = []
        for _ in range(30):  # bounded: until the 5 waiting records are consumed
            msg = rt.poll(1.0)
            got += [msg] if msg is not None else []
            if len(got) == 5:
                break
        assert len(got) == 5 and healthz() == 200
    finally:
        http.close()
        rt.close()


def test_transaction_timeout_over_the_brokers_limit_is_refused_with_what_to_change(settings):
    from ocrstream.streaming import FatalKafkaError
    from ocrstream.streaming.delivery import Delivery

    s = settings.model_copy(update={"delivery": "exactly-once", "page_timeout_s": 3600.0})  # 2 h > 15 min
    with pytest.raises(FatalKafkaError, match="transaction.max.timeout.ms"):
        Delivery(s, None, "probe")


def test_stuck_download_and_render_fail_only_their_page(settings, store, stages, monkeypatch):
    """Time budgets: a download that hangs fails its page with storage_timeout, a render that
    hangs with render_timeout; the partition and the other documents go on."""
    import consumers.pages as pages_module
    from ocrstream.storage import ObjectStore

    s = settings.model_copy(update={"download_timeout_s": 1.0, "render_timeout_s": 1.0, "prepare_threads": 2})
    real_get, real_decode = ObjectStore.get_bytes, pages_module.decode_image_page
    release = __import__("threading").Event()

    def slow_get(self, bucket, key, *a, **kw):
        if key.endswith("hang-download.png") and __import__("threading").current_thread().name.startswith("prepare"):
            release.wait(30)  # a download that never ends (bounded for the test's sake)
        return real_get(self, bucket, key, *a, **kw)

    def slow_decode(data, page_number, max_pixels):
        image = real_decode(data, page_number, max_pixels)
        if image.shape[:2] == (77, 177):
            release.wait(30)
        return image

    monkeypatch.setattr(ObjectStore, "get_bytes", slow_get)
    monkeypatch.setattr(pages_module, "decode_image_page", slow_decode)
    with DocumentPublisher(s) as pub:
        for name, data in (("hang-download.png", _png()), ("hang-render.png", _png((177, 77)))):
            store.client.put_object(s.bucket, f"uploads/{name}", io.BytesIO(data), len(data))
        stuck_download = pub.publish_object(s.bucket, "uploads/hang-download.png")
        stuck_render = pub.publish_object(s.bucket, "uploads/hang-render.png")
    ids = _publish_valid(s, store)
    try:
        _threads_pipeline(s, stages)
        results = _wait_results(s, ids | {stuck_download, stuck_render})
    finally:
        release.set()
    assert results[stuck_download].error.code == "storage_timeout", results[stuck_download].error
    assert results[stuck_render].error.code == "render_timeout", results[stuck_render].error
    assert all(results[d].status == "succeeded" for d in ids)


class _HangOnMarker(NullEngine):
    """Hangs (past the page budget) on the marker page, wherever it is in the batch."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def ocr_batch(self, images):
        if any((img.shape[1], img.shape[0]) == MARKER_SIZE for img in images):
            time.sleep(self.seconds)
        return super().ocr_batch(images)


def test_engine_timeout_in_a_batch_fails_only_the_page_that_hangs(settings, store, stages):
    """A batch over its engine budget is not failed as a whole: the worker restarts, the batch's
    pages run one by one, and only the page that hangs fails with engine_timeout."""
    s = settings.model_copy(update={"page_timeout_s": 0.5, "batch_max_pages": 8, "batch_max_wait_ms": 1500})
    marker = _png(MARKER_SIZE)
    store.client.put_object(s.bucket, "uploads/hang.png", io.BytesIO(marker), len(marker))
    with DocumentPublisher(s) as pub:
        hang = pub.publish_object(s.bucket, "uploads/hang.png")
    ids = _publish_valid(s, store, 7)  # with the marker: one batch of 8
    flag = lambda: StopFlag(install_signals=False)  # noqa: E731
    stages.start(Splitter(s, flag()))
    stages.start(Assembler(s, flag()))
    stuck = 0
    latest: dict = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (ids | {hang}) <= latest.keys():
        worker = stages.start(OcrWorker(s, engine=_HangOnMarker(6.0), stop=flag()))  # > 8 x 0.5 s
        while time.monotonic() < deadline and not worker.stop.is_set():
            latest = read_latest_results(s, timeout_s=5)
            if (ids | {hang}) <= latest.keys():
                break
        stages.stop(worker)
        if stages.errors.pop(id(worker), None) is not None:
            stuck += 1  # the engine overran: this process would exit and be restarted
        assert stuck <= 4, "the hanging page was retried more than its attempts allow"
    assert (ids | {hang}) <= latest.keys()
    assert latest[hang].status == "failed" and latest[hang].error.code == "engine_timeout"
    assert all(latest[d].status == "succeeded" for d in ids), {d: latest[d].error for d in ids}
    assert stuck >= 2  # once in the batch of 8, once alone
