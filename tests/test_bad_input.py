"""Bad and hostile input through the real topics: each ends as a dead letter and/or a
``failed`` result with a precise reason code, and the partitions keep flowing."""

from __future__ import annotations

import io
import struct
import zlib

import orjson
import pymupdf
import pytest
from confluent_kafka import Producer
from PIL import Image

from ocrstream.streaming import StopFlag, now_ms
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.engine.null import NullEngine
from ocrstream.kafka import producer_config
from schemas import DeadLetter, DocumentRef, DocumentResult, ObjectRef, PageResult, PageTask, decode, encode

from conftest import consume_all, make_pdf

pytestmark = pytest.mark.integration


def _png_bomb(width: int, height: int) -> bytes:
    """A real, valid 1-bit PNG of width x height (zeros compress ~1000:1)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _zero_page_pdf() -> bytes:
    body = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
            b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n")
    xref_at = len(body)
    return body + (b"xref\n0 3\n0000000000 65535 f \n0000000009 00000 n \n0000000052 00000 n \n"
                   b"trailer<</Size 3/Root 1 0 R>>\nstartxref\n" + str(xref_at).encode() + b"\n%%EOF\n")


def _encrypted_pdf() -> bytes:
    doc = pymupdf.open()
    doc.new_page().insert_text((72, 72), "secret")
    return doc.tobytes(encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner", user_pw="user")


def _many_pages_pdf(n: int) -> bytes:
    doc = pymupdf.open()
    for _ in range(n):
        doc.new_page(width=200, height=200)
    return doc.tobytes()


def _image(mode: str, fmt: str, **save) -> bytes:
    img = Image.new(mode, (320, 200), 0 if mode not in ("CMYK",) else (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _tiff_two_pages() -> bytes:
    buf = io.BytesIO()
    a, b = Image.new("L", (300, 200), 255), Image.new("L", (200, 300), 255)
    a.save(buf, "TIFF", save_all=True, append_images=[b])
    return buf.getvalue()


def _png16() -> bytes:
    img = Image.new("I;16", (300, 200))
    img.putpixel((10, 10), 65535)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# document id -> (filename, object bytes or None for "never uploaded", expected outcome)
# outcome: ("doc", code) = failed document result from the splitter;
#          ("pages", n)  = n page results from the worker, all succeeded;
#          ("page", code) = one failed page result from the worker.
CASES = {
    "zero-byte": ("empty.pdf", b"", ("doc", "empty_object")),
    "missing": ("missing.pdf", None, ("doc", "object_not_found")),
    "truncated": ("cut.pdf", make_pdf([["truncated"]])[:300], ("doc", "corrupt_document")),
    "encrypted": ("locked.pdf", _encrypted_pdf(), ("doc", "encrypted_document")),
    "no-pages": ("empty-doc.pdf", _zero_page_pdf(), ("doc", "no_pages")),
    "5000-pages": ("huge.pdf", _many_pages_pdf(5000), ("doc", "too_many_pages")),
    "bomb": ("bomb.png", _png_bomb(30000, 30000), ("doc", "page_too_large")),
    "mismatch": ("really-a-png.pdf", _image("RGB", "PNG"), ("doc", "type_mismatch")),
    "text": ("notes.txt", b"just some text\n", ("doc", "unsupported_type")),
    "big-page": ("poster.pdf", make_pdf([["x"]], size=(14400, 14400)), ("page", "page_too_large")),
    "tiff": ("two.tiff", _tiff_two_pages(), ("pages", 2)),
    "cmyk": ("print.jpg", _image("CMYK", "JPEG"), ("pages", 1)),
    "png16": ("deep.png", _png16(), ("pages", 1)),
    "unicode": ("ünï cödé.png", _image("L", "PNG"), ("pages", 1)),
    "webp": ("pic.webp", _image("RGB", "WEBP"), ("pages", 1)),
    "bmp": ("pic.bmp", _image("RGB", "BMP"), ("pages", 1)),
}


def test_hostile_documents_fail_precisely_and_nothing_blocks(settings, store, stages):
    p = Producer(producer_config(settings))
    for doc_id, (name, data, _) in CASES.items():
        key = f"uploads/{doc_id}/{name}"
        if data is not None:
            store.put_bytes(key, data)
        ref = DocumentRef(document_id=doc_id, source=ObjectRef(bucket=settings.bucket, key=key, filename=name),
                          submitted_at=now_ms())
        p.produce(settings.topic("ingest"), encode(ref), doc_id)
    # malformed references
    p.produce(settings.topic("ingest"), b"\xff\xfe not json", b"garbage")
    p.produce(settings.topic("ingest"), orjson.dumps({"schema": "document_ref", "schema_version": 99,
                                                      "document_id": "future"}), b"future")
    p.produce(settings.topic("ingest"), orjson.dumps({"schema": "document_ref", "schema_version": 1,
                                                      "document_id": "no-source", "submitted_at": 1}), b"no-source")
    traversal = DocumentRef(document_id="traversal", submitted_at=now_ms(),
                            source=ObjectRef(bucket=settings.bucket, key="uploads/../../etc/passwd", filename="passwd"))
    p.produce(settings.topic("ingest"), encode(traversal), b"traversal")
    oversized = DocumentRef(document_id="oversized", submitted_at=now_ms(),
                            source=ObjectRef(bucket=settings.bucket, key="uploads/x.pdf", filename="x" * 1000))
    p.produce(settings.topic("ingest"), encode(oversized)[:-1] + b"," + b'"pad":"' + b"p" * 300_000 + b'"}',
              b"oversized")
    assert p.flush(30) == 0

    small = settings.model_copy(update={"max_message_bytes": 200_000})
    stages.start(Splitter(small, StopFlag(install_signals=False)))
    stages.start(OcrWorker(settings, engine=NullEngine(), stop=StopFlag(install_signals=False)))

    doc_failures = {k for k, (_, _, o) in CASES.items() if o[0] == "doc"} | {"future", "no-source", "traversal", "oversized"}
    results = {m.key().decode(): decode(m.value(), DocumentResult)
               for m in consume_all(settings, settings.topic("document-results"), len(doc_failures), 120)}
    dead = [decode(m.value(), DeadLetter)
            for m in consume_all(settings, settings.topic("dead-letters"), len(doc_failures) + 1, 60)]
    n_pages = sum(o[1] if o[0] == "pages" else 1 for _, _, o in CASES.values() if o[0] in ("pages", "page"))
    pages = [decode(m.value(), PageResult) for m in consume_all(settings, settings.topic("page-results"), n_pages, 120)]

    for doc_id, (_, _, (kind, expected)) in CASES.items():
        if kind == "doc":
            assert results[doc_id].status == "failed", doc_id
            assert results[doc_id].error.code == expected, (doc_id, results[doc_id].error)
        elif kind == "page":
            (page,) = [pr for pr in pages if pr.document_id == doc_id]
            assert page.status == "failed" and page.error.code == expected
        else:
            got = sorted((pr for pr in pages if pr.document_id == doc_id), key=lambda pr: pr.page_number)
            assert [pr.page_number for pr in got] == list(range(1, expected + 1)), doc_id
            assert all(pr.status == "succeeded" and pr.width > 0 and pr.dpi is None for pr in got), doc_id
    tiff = sorted((pr for pr in pages if pr.document_id == "tiff"), key=lambda pr: pr.page_number)
    assert [(pr.width, pr.height) for pr in tiff] == [(300, 200), (200, 300)]

    assert results["future"].error.code == "unsupported_schema_version"
    assert results["no-source"].error.code == "schema_violation"
    assert results["traversal"].error.code == "invalid_key"
    assert results["oversized"].error.code == "message_too_large"
    by_key = {d.key: d for d in dead}
    assert by_key["garbage"].reason == "invalid_json" and by_key["garbage"].document_id is None
    assert by_key["oversized"].reason == "message_too_large" and by_key["oversized"].value_truncated
    for doc_id in doc_failures:
        dl = by_key[doc_id]
        assert dl.reason == results[doc_id].error.code
        assert dl.topic == settings.topic("ingest") and dl.stage == "splitter" and dl.offset >= 0

    # The partitions keep flowing: a valid document submitted afterwards is split and OCR'd.
    store.put_bytes("uploads/after.pdf", make_pdf([["after"]]))
    ok = DocumentRef(document_id="after", source=ObjectRef(bucket=settings.bucket, key="uploads/after.pdf",
                                                           filename="after.pdf"), submitted_at=now_ms())
    p.produce(settings.topic("ingest"), encode(ok), b"after")
    p.flush(10)
    after = consume_all(settings, settings.topic("page-results"), 1, 60, key_filter=lambda k: k == b"after")
    assert decode(after[0].value(), PageResult).status == "succeeded"
    tasks = consume_all(settings, settings.topic("pages"), 1, 30, key_filter=lambda k: k.startswith(b"after/"))
    assert decode(tasks[0].value(), PageTask).page_count == 1
