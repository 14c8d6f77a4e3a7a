"""Regression tests for storage, documents, page cache, dead-letter replay, watcher checkpoint
and document-id fixes. Each test failed before its fix (noted per test).

Unit tests need nothing; ``integration`` tests use the real broker and S3 server of conftest.py.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import struct
import time
import unicodedata
import uuid
import warnings

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from PIL import Image

from conftest import base_settings, make_pdf
from consumers.pages import SourceCache, prepare_page
from ocrstream.documents import decode_image_page, inspect, open_pdf, render_pdf_page
from ocrstream.errors import OcrstreamError, ReasonCode
from ocrstream.kafka import make_admin, producer_config, topic_partitions
from ocrstream.storage import ObjectStore, validate_key
from schemas import DeadLetter, DocumentOptions, ObjectRef, PageTask, encode

LIMITS = dict(max_pages=100, max_page_pixels=50_000_000)


def _code(excinfo) -> ReasonCode:
    return excinfo.value.code


def _task(bucket: str, key: str, *, kind: str = "pdf", page: int = 1, pages: int = 1,
          etag: str | None = None) -> PageTask:
    return PageTask(document_id="d-" + uuid.uuid4().hex[:8],
                    source=ObjectRef(bucket=bucket, key=key, filename=key.rsplit("/", 1)[-1], etag=etag),
                    page_number=page, page_count=pages, kind=kind, dpi=72 if kind == "pdf" else None,
                    submitted_at=0)


# --- 1. SourceCache: eviction must not close a document in use ----------------------------------

class _FakeStore:
    """``get_bytes`` from a dict (no S3 server)."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.calls: list[str] = []

    def get_bytes(self, bucket, key, max_bytes, version_id=None, etag=None):
        self.calls.append(key)
        return self.objects[key]


@pytest.fixture
def two_pdf_cache():
    a = make_pdf([["DOCUMENT A PAGE ONE"], ["DOCUMENT A PAGE TWO"], ["DOCUMENT A PAGE THREE"]])
    b = make_pdf([["DOCUMENT B PAGE ONE"], ["DOCUMENT B PAGE TWO"]])
    store = _FakeStore({"a.pdf": a, "b.pdf": b})
    # Room for one of the two objects only: caching B evicts A.
    cache = SourceCache(store, base_settings(allowed_sources="bucket/"), max_bytes=max(len(a), len(b)) + 1)
    return cache, store


def test_evicted_pdf_in_use_stays_open(two_pdf_cache):
    """Before the fix: getting B closed A's document, and rendering page 2 of A (a prepare
    thread that already held A) failed as corrupt_document."""
    cache, store = two_pdf_cache
    data_a, doc_a = cache.get(_task("bucket", "a.pdf", page=2, pages=3))
    cache.get(_task("bucket", "b.pdf"))  # another prepare thread: B evicts A
    image = render_pdf_page(doc_a, 2, 72, 50_000_000)
    assert image.shape[2] == 3 and image.mean() < 255  # rendered (some text on white)
    assert not doc_a.is_closed
    # A was evicted: the next page of A downloads it again.
    cache.get(_task("bucket", "a.pdf", page=3, pages=3))
    assert store.calls == ["a.pdf", "b.pdf", "a.pdf"]


def test_lease_closes_evicted_pdf_after_last_user(two_pdf_cache):
    """A leased document evicted meanwhile is closed when its last lease ends, not before."""
    cache, _ = two_pdf_cache
    s = base_settings()
    task_a = _task("bucket", "a.pdf", page=2, pages=3)
    with cache.lease(task_a) as (_, doc_a):
        with cache.lease(task_a) as (_, again):
            assert again is doc_a
        prepared = prepare_page(cache, _task("bucket", "b.pdf"), s)  # evicts A while it is leased
        assert prepared.image.size and set(prepared.timings) == {"download_ms", "render_ms"}
        assert not doc_a.is_closed
        assert render_pdf_page(doc_a, 2, 72, 50_000_000).size
    assert doc_a.is_closed
    # B is still cached and open; prepare_page releases its lease.
    with cache.lease(_task("bucket", "b.pdf")) as (_, doc_b):
        assert not doc_b.is_closed


def test_prepare_page_threads_share_a_small_cache():
    """Many prepare threads over three PDFs and a cache that holds one: every page renders."""
    from concurrent.futures import ThreadPoolExecutor

    pdfs = {f"{n}.pdf": make_pdf([[f"DOC {n} PAGE {p}"] for p in range(1, 4)]) for n in "xyz"}
    s = base_settings(allowed_sources="bucket/")
    cache = SourceCache(_FakeStore(pdfs), s, max_bytes=max(map(len, pdfs.values())) + 1)
    tasks = [_task("bucket", name, page=p, pages=3) for _ in range(10) for name in pdfs for p in (1, 2, 3)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda t: prepare_page(cache, t, s), tasks))
    assert len(results) == len(tasks)


# --- 2. NFD keys are fetched as they are ---------------------------------------------------------

def test_validate_key_returns_key_unchanged():
    """Before the fix: the key came back NFC-normalized (another S3 object)."""
    nfd = unicodedata.normalize("NFD", "uploads/Résumé.pdf")
    assert nfd != unicodedata.normalize("NFC", nfd)
    assert validate_key(nfd) == nfd
    for bad in ("../x", "a/./b", "/abs", "a\\b", "a\x00b", "", "   ", "a/\ud800.pdf"):
        with pytest.raises(OcrstreamError) as e:
            validate_key(bad)
        assert _code(e) == ReasonCode.INVALID_KEY


@pytest.mark.integration
def test_nfd_key_is_fetched(settings, store):
    """Before the fix: object_not_found (the pipeline asked for the NFC key)."""
    nfd = "uploads/Re\u0301sume\u0301.pdf"
    pdf = make_pdf([["RESUME"]])
    info = store.put_bytes(nfd, pdf, "application/pdf")
    assert store.get_bytes(settings.bucket, validate_key(nfd), 10_000_000) == pdf
    cache = SourceCache(store, settings)
    data, doc = cache.get(_task(settings.bucket, nfd, etag=info.etag))
    assert data == pdf and doc.page_count == 1
    # The NFC spelling is another object, which does not exist.
    with pytest.raises(OcrstreamError) as e:
        store.get_bytes(settings.bucket, unicodedata.normalize("NFC", nfd), 10_000_000)
    assert _code(e) == ReasonCode.OBJECT_NOT_FOUND


# --- 3. ETag check ------------------------------------------------------------------------------

@pytest.mark.integration
def test_get_bytes_refuses_replaced_object(settings, store):
    """Before the fix: get_bytes had no etag parameter, and the pipeline read the new bytes."""
    old = store.put_bytes("in/doc.png", b"first version" * 10)
    new = store.put_bytes("in/doc.png", b"second version" * 10)
    assert old.etag != new.etag
    with pytest.raises(OcrstreamError) as e:
        store.get_bytes(settings.bucket, "in/doc.png", 10_000, etag=old.etag)
    assert _code(e) == ReasonCode.OBJECT_CHANGED and not e.value.transient
    assert store.get_bytes(settings.bucket, "in/doc.png", 10_000, etag=new.etag) == b"second version" * 10
    assert store.get_bytes(settings.bucket, "in/doc.png", 10_000, etag=f'"{new.etag}"') == b"second version" * 10
    assert store.get_bytes(settings.bucket, "in/doc.png", 10_000) == b"second version" * 10

    # Replaced between the HEAD and the GET: the conditional GET (If-Match) / response ETag catches it.
    real_stat = store.stat
    store.stat = lambda *a, **k: dataclasses.replace(real_stat(*a, **k), etag=old.etag)  # HEAD saw the old one
    try:
        with pytest.raises(OcrstreamError) as e:
            store.get_bytes(settings.bucket, "in/doc.png", 10_000, etag=old.etag)
        assert _code(e) == ReasonCode.OBJECT_CHANGED
    finally:
        del store.stat

    # Through the page cache (the worker's path): the task carries the old ETag.
    cache = SourceCache(store, settings.model_copy(update={"allowed_sources": f"{settings.bucket}/in/"}))
    with pytest.raises(OcrstreamError) as e:
        cache.get(_task(settings.bucket, "in/doc.png", kind="image", etag=old.etag))
    assert _code(e) == ReasonCode.OBJECT_CHANGED


@pytest.mark.integration
def test_get_bytes_etag_of_multipart_upload(settings, store):
    """The ETag of a multipart upload (what put_bytes returns for > 5 MiB) matches what GET returns."""
    data = os.urandom(12 * 1024 * 1024)
    info = store.put_bytes("in/big.bin", data)
    assert store.stat(settings.bucket, "in/big.bin").etag == info.etag
    assert store.get_bytes(settings.bucket, "in/big.bin", 64 * 1024 * 1024, etag=info.etag) == data


# --- 4. No raw client exception escapes ObjectStore --------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("bucket", ["Bad_Bucket!", "a b", "192.168.1.1", "a..b", "-abc", "x" * 64, "ab"])
def test_invalid_bucket_is_a_reason_code(settings, store, bucket):
    """Before the fix: minio raised ValueError (a consumer crash)."""
    calls = [
        lambda: store.stat(bucket, "k.pdf"),
        lambda: store.get_bytes(bucket, "k.pdf", 1000),
        lambda: store.get_bytes(bucket, "k.pdf", 1000, etag="abc"),
        lambda: store.list("inbox/", bucket=bucket),
        lambda: store.put_bytes("k.pdf", b"x", bucket=bucket),
        lambda: store.ensure_bucket(bucket),
    ]
    if 3 <= len(bucket) <= 63:  # what the message schema lets through to the worker
        calls.append(lambda: SourceCache(store, settings).get(_task(bucket, "k.pdf")))
    for call in calls:
        with pytest.raises(OcrstreamError) as e:
            call()
        assert _code(e) == ReasonCode.INVALID_BUCKET


@pytest.mark.integration
def test_client_exceptions_are_mapped(settings, store, monkeypatch):
    """Keys the client refuses, and anything unexpected from it, become reason codes."""
    import urllib3
    from minio.error import ServerError

    with pytest.raises(OcrstreamError) as e:
        store.stat(settings.bucket, "   ")  # minio: ValueError (blank object name)
    assert _code(e) == ReasonCode.INVALID_KEY
    with pytest.raises(OcrstreamError) as e:
        store.get_bytes(settings.bucket, "missing.pdf", 1000)
    assert _code(e) == ReasonCode.OBJECT_NOT_FOUND
    with pytest.raises(OcrstreamError) as e:
        store.list("x/", bucket="no-such-bucket-" + uuid.uuid4().hex[:8])
    assert _code(e) == ReasonCode.OBJECT_NOT_FOUND
    # Legacy names (upper case, underscores) pass the client's check; the server does not know them.
    with pytest.raises(OcrstreamError) as e:
        store.stat("Legacy_Bucket", "k.pdf")
    assert _code(e) in (ReasonCode.OBJECT_NOT_FOUND, ReasonCode.INVALID_BUCKET, ReasonCode.STORAGE_ERROR)

    store.put_bytes("k.bin", b"bytes")
    for exc, transient in ((RuntimeError("boom"), False), (ServerError("unavailable", 503), True),
                           (urllib3.exceptions.ProtocolError("reset"), True), (ValueError("odd"), False)):
        def raise_it(*a, exc=exc, **k):
            raise exc
        monkeypatch.setattr(store.client, "get_object", raise_it)
        with pytest.raises(OcrstreamError) as e:
            store.get_bytes(settings.bucket, "k.bin", 1000)
        assert _code(e) == ReasonCode.STORAGE_ERROR and e.value.transient is transient, exc
        monkeypatch.setattr(store.client, "list_objects", raise_it)
        with pytest.raises(OcrstreamError) as e:
            store.list("")
        assert _code(e) == ReasonCode.STORAGE_ERROR
    monkeypatch.setattr(store.client, "stat_object", lambda *a, **k: (_ for _ in ()).throw(ServerError("x", 412)))
    with pytest.raises(OcrstreamError) as e:
        store.stat(settings.bucket, "k.bin")
    assert _code(e) == ReasonCode.OBJECT_CHANGED


# --- 5. Corrupt multi-page TIFF ----------------------------------------------------------------

def _tiff(pages: int = 2, size=(64, 48)) -> bytearray:
    frames = [Image.new("RGB", size, c) for c in ("white", "black", "gray", "red")[:pages]]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return bytearray(buf.getvalue())


def _next_ifd_pos(data: bytearray, ifd: int) -> tuple[str, int]:
    bo = "<" if data[:2] == b"II" else ">"
    entries = struct.unpack(bo + "H", data[ifd:ifd + 2])[0]
    return bo, ifd + 2 + 12 * entries


@pytest.mark.parametrize("pointer", [0xFFFFFFF0, 10, 20])
def test_tiff_corrupt_next_ifd_is_corrupt_document(pointer):
    """Before the fix: inspect raised TypeError ("Missing dimensions") from img.n_frames."""
    data = _tiff(2)
    bo = "<" if data[:2] == b"II" else ">"
    first_ifd = struct.unpack(bo + "I", data[4:8])[0]
    bo, pos = _next_ifd_pos(data, first_ifd)
    assert struct.unpack(bo + "I", data[pos:pos + 4])[0] > first_ifd  # the real second IFD
    data[pos:pos + 4] = struct.pack(bo + "I", pointer)  # huge, or into the first IFD's entries
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about the tags it skips
        with pytest.raises(OcrstreamError) as e:
            inspect(bytes(data), "scan.tif", **LIMITS)
        assert _code(e) == ReasonCode.CORRUPT_DOCUMENT
        with pytest.raises(OcrstreamError) as e:
            decode_image_page(bytes(data), 2, 50_000_000)
        assert _code(e) == ReasonCode.CORRUPT_DOCUMENT
        assert decode_image_page(bytes(data), 1, 50_000_000).shape == (48, 64, 3)  # frame 1 is intact


def test_tiff_frame_count_is_bounded():
    assert inspect(bytes(_tiff(3)), "a.tif", **LIMITS).page_count == 3
    with pytest.raises(OcrstreamError) as e:
        inspect(bytes(_tiff(4)), "a.tif", max_pages=2, max_page_pixels=50_000_000)
    assert _code(e) == ReasonCode.TOO_MANY_PAGES


# --- Hostile inputs: always an OcrstreamError with a reason code -------------------------------

_LOOP_PDF = b"""%PDF-1.4
1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj
2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj
3 0 obj << /Type /Pages /Kids [2 0 R] /Count 1 /Parent 2 0 R >> endobj
trailer << /Root 1 0 R >>
%%EOF
"""


def _png(w: int = 300, h: int = 200) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "white").save(buf, "PNG")
    return buf.getvalue()


def test_pdf_with_lying_page_count_is_corrupt_document():
    """Before the fix: inspect raised RuntimeError ("Invalid number of pages") from page_count."""
    data = _LOOP_PDF.replace(b"/Count 1 >> endobj\n3", b"/Count 99999999 >> endobj\n3")
    with pytest.raises(OcrstreamError) as e:
        inspect(data, "a.pdf", **LIMITS)
    assert _code(e) == ReasonCode.CORRUPT_DOCUMENT


def test_pdf_page_tree_loop_is_corrupt_document():
    doc = open_pdf(_LOOP_PDF)
    try:
        with pytest.raises(OcrstreamError) as e:
            render_pdf_page(doc, 1, 72, 50_000_000)
        assert _code(e) == ReasonCode.CORRUPT_DOCUMENT
    finally:
        doc.close()


def test_truncated_png_is_corrupt_document():
    data = _png()
    with pytest.raises(OcrstreamError) as e:
        decode_image_page(data[: len(data) // 2], 1, 50_000_000)
    assert _code(e) == ReasonCode.CORRUPT_DOCUMENT
    with pytest.raises(OcrstreamError) as e:
        inspect(data[:33], "a.png", **LIMITS)  # signature + IHDR only
    assert _code(e) == ReasonCode.CORRUPT_DOCUMENT


def test_tiff_with_absurd_dimensions_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (10, 10)).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        tag, typ = struct.unpack("<HH", data[entry:entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            data[entry + 8:entry + 12] = struct.pack("<HH", 65535, 0) if typ == 3 else struct.pack("<I", 0x7FFFFFFF)
    for call in (lambda: inspect(bytes(data), "a.tif", **LIMITS), lambda: decode_image_page(bytes(data), 1, 50_000_000)):
        with pytest.raises(OcrstreamError) as e:
            call()
        assert _code(e) == ReasonCode.PAGE_TOO_LARGE


def test_second_tiff_frame_over_the_pixel_limit():
    """A small first frame and a large second one: the second is refused by its own size."""
    buf = io.BytesIO()
    Image.new("L", (10, 10)).save(buf, "TIFF", save_all=True, append_images=[Image.new("L", (400, 400))])
    assert inspect(buf.getvalue(), "a.tif", max_pages=10, max_page_pixels=100_000).page_count == 2
    with pytest.raises(OcrstreamError) as e:
        decode_image_page(buf.getvalue(), 2, 100_000)
    assert _code(e) == ReasonCode.PAGE_TOO_LARGE


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", range(5))
def test_garbage_after_image_magic_is_corrupt_document(seed):
    rnd = random.Random(seed)
    for name, data in (("a.png", b"\x89PNG\r\n\x1a\n" + rnd.randbytes(200)), ("a.tif", b"II*\x00" + rnd.randbytes(200)),
                       ("a.bmp", b"BM" + rnd.randbytes(200)), ("a.jpg", b"\xff\xd8\xff" + rnd.randbytes(200)),
                       ("a.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\xff" * 20)):
        for call in (lambda: inspect(data, name, **LIMITS), lambda: decode_image_page(data, 1, 50_000_000)):
            with pytest.raises(OcrstreamError) as e:
                call()
            assert _code(e) in (ReasonCode.CORRUPT_DOCUMENT, ReasonCode.PAGE_TOO_LARGE), (name, e.value)


# --- 6. Dead-letter replay commits only what was acknowledged -----------------------------------

@pytest.mark.integration
def test_replay_does_not_commit_a_failed_produce(settings):
    """Before the fix: the produce failure was ignored, the position committed, and the
    dead letter counted as replayed."""
    from consumers.deadletters import ReplayError, replay_dead_letters

    s = settings
    small = s.topic("replay-target-small")
    admin = make_admin(s)
    admin.create_topics([NewTopic(small, 1, 1, config={"max.message.bytes": "1024"})])[small].result(30)
    producer = Producer(producer_config(s))
    topic_partitions(producer, small)

    def dead_letter(value: str, topic: str) -> DeadLetter:
        return DeadLetter(topic=topic, partition=0, offset=0, key="doc-1", reason="storage_error",
                          error_class="OcrstreamError", message="x", stage="splitter", value=value, failed_at=0)

    dlq = s.topic("dead-letters")
    offsets = []
    producer.produce(dlq, encode(dead_letter('{"ok": 1}', small)), b"doc-1",
                     on_delivery=lambda err, msg: offsets.append((msg.partition(), msg.offset())))
    # Incompressible and over the target topic's 1 KiB limit: the broker refuses it.
    producer.produce(dlq, encode(dead_letter(os.urandom(15000).hex(), small)), b"doc-1",
                     on_delivery=lambda err, msg: offsets.append((msg.partition(), msg.offset())))
    assert producer.flush(30) == 0
    (partition, good), (_, bad) = offsets
    assert bad == good + 1

    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": s.group("dlq-replay")})
    parts = [TopicPartition(dlq, p) for p in topic_partitions(consumer, dlq)]

    def committed() -> dict[int, int]:
        deadline = time.monotonic() + 60
        while True:  # a fresh broker answers NOT_COORDINATOR while it loads __consumer_offsets
            try:
                return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    try:
        assert all(off < 0 for off in committed().values())
        with pytest.raises(ReplayError):
            replay_dead_letters(s, timeout_s=20)
        after = committed()
    finally:
        consumer.close()
    assert after[partition] == bad  # the good one is committed, the failed one is not
    assert all(off < 0 for p, off in after.items() if p != partition)
    # A second replay starts with the failed dead letter again (and fails again).
    with pytest.raises(ReplayError):
        replay_dead_letters(s, timeout_s=20)


# --- 7. Watcher checkpoint: tombstones, and no partial checkpoint -------------------------------

def _produce_state(s, records: list[tuple[str, bytes | None]]) -> None:
    producer = Producer(producer_config(s))
    for key, value in records:
        producer.produce(s.topic("watch-state"), value, key.encode())
    assert producer.flush(30) == 0


def _state(etag: str, version_id: str | None = None) -> bytes:
    return orjson.dumps({"etag": etag, "version_id": version_id, "document_id": "x", "published_at": 0})


@pytest.mark.integration
def test_checkpoint_tombstone_removes_the_object(settings):
    """Before the fix: orjson.loads(None) raised TypeError and the watcher never started."""
    from producers.watch import DropFolderWatcher

    b = settings.bucket
    _produce_state(settings, [
        (f"{b}/inbox/a.pdf", _state("e-a")),
        (f"{b}/inbox/b.pdf", _state("e-b")),
        (f"{b}/inbox/v.pdf?versionId=v1", _state("e-v1", "v1")),
        (f"{b}/inbox/v.pdf?versionId=v2", _state("e-v2", "v2")),
        (f"{b}/inbox/a.pdf", None),  # tombstone
        (f"{b}/inbox/v.pdf?versionId=v1", None),  # tombstone of one version
        (f"{b}/inbox/never.pdf", None),  # tombstone of a key that had no record
        (f"{b}/inbox/junk.pdf", b"not json"),
    ])
    watcher = DropFolderWatcher(settings)
    seen = watcher.seen
    assert not seen.covers(f"{b}/inbox/a.pdf", "e-a", None)
    assert seen.covers(f"{b}/inbox/b.pdf", "e-b", None)
    assert not seen.covers(f"{b}/inbox/v.pdf", None, "v1")
    assert seen.covers(f"{b}/inbox/v.pdf", None, "v2")
    assert len(seen) == 2


@pytest.mark.integration
def test_checkpoint_read_that_stops_early_raises(settings, monkeypatch):
    """Before the fix: read_to_end's timeout returned a partial (here: empty) checkpoint."""
    import producers.watch as watch

    _produce_state(settings, [(f"{settings.bucket}/inbox/a.pdf", _state("e-a"))])
    monkeypatch.setattr(watch, "CHECKPOINT_READ_IDLE_TIMEOUT_S", 0.0, raising=False)
    with pytest.raises(TimeoutError):
        watch.DropFolderWatcher(settings)
    monkeypatch.setattr(watch, "CHECKPOINT_READ_IDLE_TIMEOUT_S", 60.0)
    assert watch.DropFolderWatcher(settings).seen.covers(f"{settings.bucket}/inbox/a.pdf", "e-a", None)


# --- 8. Options are part of the document id -----------------------------------------------------

def test_document_id_depends_on_non_default_options():
    """Before the fix: stable_document_id ignored options, so a re-publish with another DPI
    had the id of the first and the assembler dropped its pages."""
    from producers.publish import stable_document_id

    base = stable_document_id("b", "k.pdf", "etag", None)
    assert stable_document_id("b", "k.pdf", "etag", None, DocumentOptions()) == base  # the watcher's id
    assert stable_document_id("b", "k.pdf", "etag", None, DocumentOptions(dpi=None)) == base
    dpi300 = stable_document_id("b", "k.pdf", "etag", None, DocumentOptions(dpi=300))
    assert dpi300 != base and len(dpi300) == 32
    assert stable_document_id("b", "k.pdf", "etag", None, DocumentOptions(dpi=300)) == dpi300  # idempotent
    assert stable_document_id("b", "k.pdf", "etag", None, DocumentOptions(dpi=200)) not in (base, dpi300)


def test_publish_object_ids_follow_options(monkeypatch):
    from ocrstream.storage import ObjectInfo
    from producers.publish import DocumentPublisher, stable_document_id

    class FakeProducer:
        def __init__(self):
            self.keys = []

        def produce(self, topic, value, key, on_delivery=None):
            self.keys.append(key)

        def poll(self, timeout):
            return 0

        def flush(self, timeout):
            return 0

    s = base_settings(allowed_sources="bkt/scans/")
    pub = DocumentPublisher(s, producer=FakeProducer())
    monkeypatch.setattr(pub.store, "stat",
                        lambda bucket, key, version_id=None: ObjectInfo(bucket, key, 10, "etag1", None, "application/pdf"))
    default = pub.publish_object("bkt", "scans/a.pdf")
    assert default == stable_document_id("bkt", "scans/a.pdf", "etag1", None)
    assert pub.publish_object("bkt", "scans/a.pdf") == default
    dpi300 = pub.publish_object("bkt", "scans/a.pdf", dpi=300)
    assert dpi300 != default and pub.publish_object("bkt", "scans/a.pdf", dpi=300) == dpi300
    assert pub.producer.keys == [default, default, dpi300, dpi300]
