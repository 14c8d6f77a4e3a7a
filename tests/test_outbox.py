"""Outbox sink and the result formats: files next to the drop folder, searchable PDFs."""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import orjson
import pymupdf
import pytest
from confluent_kafka import Producer

from consumers.assembler import Assembler
from consumers.sinks.outbox import OutboxSink, outbox_base
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.kafka import producer_config
from ocrstream.outputs import document_text, line_box, searchable_pdf, to_alto, to_hocr
from ocrstream.streaming import StopFlag
from producers.watch import DropFolderWatcher
from schemas import DeadLetter, Detection, DocumentResult, ObjectRef, Page, decode

from conftest import REPO, base_settings, committed_to_end, consume_all, make_pdf, settings_env

HOCR = "{http://www.w3.org/1999/xhtml}"
ALTO = "{http://www.loc.gov/standards/alto/ns-v4#}"


def scan_png(lines: list[str], dpi: int = 150) -> bytes:
    """An image of text (a 'scan' with no text layer): a generated page rendered to PNG."""
    with pymupdf.open(stream=make_pdf([lines], fontsize=18)) as doc:
        return doc[0].get_pixmap(dpi=dpi).tobytes("png")


def scan_pdf(pages: list[list[str]]) -> bytes:
    """A PDF whose pages are images of text only (as a scanner writes them)."""
    doc = pymupdf.open()
    for lines in pages:
        page = doc.new_page(width=595, height=842)
        page.insert_image(page.rect, stream=scan_png(lines))
    return doc.tobytes()


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def check_searchable_pdf(pdf: bytes, result: DocumentResult) -> int:
    """The PDF's extracted text is the OCR text, page by page, and each extracted line's box
    overlaps its detection's polygon (IoU >= 0.5, in PDF points). Returns the lines checked."""
    checked = 0
    with pymupdf.open(stream=pdf) as doc:
        assert doc.page_count == len(result.pages)
        for page, res in zip(doc, result.pages):
            ocr = [d for d in res.detections if d.text.strip()]
            assert page.get_text().split() == " ".join(d.text for d in ocr).split(), f"page {res.page_number}"
            scale = page.rect.width / res.width  # points per pixel
            lines = [("".join(s["text"] for s in line["spans"]).strip(), line["bbox"])
                     for block in page.get_text("dict")["blocks"] for line in block.get("lines", [])]
            assert len(lines) == len(ocr)
            for det in ocr:
                x0, y0, x1, y1 = (v * scale for v in line_box(det))
                best = max(iou(bbox, (x0, y0, x1, y1)) for text, bbox in lines if text == det.text.strip())
                assert best >= 0.5, (det.text, best)
                checked += 1
    return checked


def result_of(detections: list[Detection], width=1000, height=800, dpi=None) -> DocumentResult:
    return DocumentResult(document_id="d1", source=ObjectRef(bucket="ocrstream", key="inbox/a.png", filename="a.png"),
                          status="succeeded", page_count=1, completed_at=0,
                          pages=[Page(page_number=1, width=width, height=height, dpi=dpi, detections=detections)])


def test_searchable_pdf_lays_each_line_over_its_polygon_incl_tilted_and_non_latin():
    dets = [Detection(text="TOTAL", polygon=[[100, 100], [300, 100], [300, 140], [100, 140]], confidence=0.9),
            Detection(text="12.00", polygon=[[700, 100], [850, 100], [850, 140], [700, 140]], confidence=0.8),
            Detection(text="Tel : 03-3271 漢字", polygon=[[100, 300], [600, 320], [598, 370], [98, 350]],
                      confidence=0.7),
            Detection(text="a <small> & \"odd\" line", polygon=[[100, 500], [400, 500], [400, 518], [100, 518]],
                      confidence=0.6)]
    result = result_of(dets)
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.new("RGB", (1000, 800), "white").save(buf, "PNG", dpi=(200, 200))
    pdf = searchable_pdf(result, buf.getvalue())
    assert check_searchable_pdf(pdf, result) == 4
    with pymupdf.open(stream=pdf) as doc:  # the image's own 200 DPI sets the page size: 1000 px = 360 pt
        assert round(doc[0].rect.width) == 360
    # hOCR and ALTO parse as XML and carry every line with its box and confidence
    root = ET.fromstring(to_hocr(result))
    spans = [e for e in root.iter(f"{HOCR}span") if e.get("class") == "ocr_line"]
    assert [e.text for e in spans] == [d.text for d in dets]
    assert spans[0].get("title") == "bbox 100 100 300 140; x_wconf 90"
    alto = ET.fromstring(to_alto(result))
    strings = list(alto.iter(f"{ALTO}String"))
    assert [e.get("CONTENT") for e in strings] == [d.text for d in dets]
    assert strings[2].get("HPOS") == "98" and strings[2].get("WIDTH") == "502"


def test_searchable_pdf_keeps_pdf_pages_maps_rotation_and_skips_pages_with_text():
    scanned = scan_pdf([["first page"]])
    src = pymupdf.open(stream=scanned)
    src[0].set_rotation(90)
    src.insert_pdf(pymupdf.open(stream=make_pdf([["born digital"]])))
    data = src.tobytes()
    # Page 1 rendered at 100 DPI with rotation 90: 842x595 pt -> 1170x827 px; a line near the top-left.
    det = Detection(text="rotated line", polygon=[[50, 60], [450, 60], [450, 100], [50, 100]], confidence=0.9)
    result = DocumentResult(document_id="d2", source=None, status="succeeded", page_count=2, completed_at=0, pages=[
        Page(page_number=1, width=1170, height=827, dpi=100, detections=[det]),
        Page(page_number=2, width=827, height=1170, dpi=100,
             detections=[Detection(text="born digital", polygon=[[83, 100], [300, 100], [300, 130], [83, 130]],
                                   confidence=1.0)])])
    pdf = searchable_pdf(result, data)
    with pymupdf.open(stream=pdf) as doc:
        assert doc[0].rotation == 90
        assert doc[0].get_text().split() == ["rotated", "line"]
        words = doc[0].get_text("words")  # unrotated page coordinates: turned as displayed, then compared
        box = pymupdf.Rect(min(w[0] for w in words), min(w[1] for w in words),
                           max(w[2] for w in words), max(w[3] for w in words)) * doc[0].rotation_matrix
        assert iou(tuple(box), (50 * 0.72, 60 * 0.72, 450 * 0.72, 100 * 0.72)) >= 0.5
        assert doc[1].get_text().split() == ["born", "digital"]  # its own text, not twice


def test_outbox_paths_mirror_the_drop_folder():
    s = base_settings(bucket="ocrstream")
    ref = ObjectRef(bucket="ocrstream", key="inbox/a/scan.pdf", filename="scan.pdf")
    assert outbox_base(s, ref, "d") == "outbox/a/scan.pdf"
    assert outbox_base(s, ref.model_copy(update={"version_id": "v7"}), "d") == "outbox/a/scan.pdf@v7"
    upload = ObjectRef(bucket="ocrstream", key="uploads/d/x.jpg", filename="x.jpg")
    assert outbox_base(s, upload, "d") is None
    assert outbox_base(s.model_copy(update={"outbox_scope": "all"}), upload, "d") == "outbox/documents/d/x.jpg"
    assert outbox_base(s, None, "d") is None


def _wait_for_keys(store, prefix: str, wanted: set[str], timeout_s: float) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        keys = {o.key for o in store.list(prefix)}
        if wanted <= keys:
            return keys
        time.sleep(1.0)
    pytest.fail(f"missing in the outbox after {timeout_s}s: {sorted(wanted - keys)}")


@pytest.mark.integration
@pytest.mark.slow
def test_dropped_files_show_up_in_the_outbox_in_every_format(settings, store, stages, tmp_path):
    s = settings.model_copy(update={"outbox_inbox_action": "tag"})
    # A record on the results topic that is not a document result: dead-lettered, the sink goes on.
    p = Producer(producer_config(s))
    p.produce(s.topic("document-results"), b"not json", b"junk")
    p.flush(10)
    store.put_bytes("inbox/scans/filing.pdf", scan_pdf([["IN THE CIRCUIT COURT", "Case number 2024 CV 118"],
                                                        ["ORDER OF DISMISSAL"]]), "application/pdf")
    store.put_bytes("inbox/photo.png", scan_png(["TOTAL 12.00", "THANK YOU"]), "image/png")
    store.put_bytes("inbox/broken.pdf", b"%PDF-1.7\nnot really a pdf", "application/pdf")
    for stage in (DropFolderWatcher(s, StopFlag(install_signals=False)), Splitter(s, StopFlag(install_signals=False)),
                  OcrWorker(s, stop=StopFlag(install_signals=False)), Assembler(s, StopFlag(install_signals=False))):
        stages.start(stage)
    sink = stages.start(OutboxSink(s, StopFlag(install_signals=False)))
    every = (".json", ".txt", ".hocr", ".alto.xml", ".pdf")
    wanted = ({f"outbox/scans/filing.pdf{x}" for x in every} | {f"outbox/photo.png{x}" for x in every}
              | {"outbox/broken.pdf.json", "outbox/broken.pdf.error.json"})
    keys = _wait_for_keys(store, "outbox/", wanted, timeout_s=300)
    index = {k for k in keys if k.startswith("outbox/.ocrstream/index/")}
    assert keys - index == wanted and len(index) == 3  # no .txt for the failed document, no stray files

    # two dead letters, in either order (other partitions): the sink's for the junk record and the
    # splitter's for broken.pdf
    letters = [decode(m.value(), DeadLetter) for m in consume_all(s, s.topic("dead-letters"), 2)]
    assert sorted((d.stage, d.reason) for d in letters) == [("outbox", "invalid_json"),
                                                            ("splitter", "corrupt_document")], letters
    for name, pages in (("scans/filing.pdf", 2), ("photo.png", 1)):
        base = f"outbox/{name}"
        result = decode(store.get_bytes(s.bucket, base + ".json", 10 << 20), DocumentResult)
        assert result.status == "succeeded" and result.page_count == pages
        text = store.get_bytes(s.bucket, base + ".txt", 10 << 20).decode()
        assert text == document_text(result) and text.count("\f") == pages - 1
        assert "TOTAL" in text or "CIRCUIT" in text
        hocr = ET.fromstring(store.get_bytes(s.bucket, base + ".hocr", 10 << 20))
        assert [e.text for e in hocr.iter(f"{HOCR}span") if e.get("class") == "ocr_line"] == \
            [d.text for p in result.pages for d in p.detections]
        alto = ET.fromstring(store.get_bytes(s.bucket, base + ".alto.xml", 10 << 20))
        assert len(list(alto.iter(f"{ALTO}TextLine"))) == sum(len(p.detections) for p in result.pages)
        assert check_searchable_pdf(store.get_bytes(s.bucket, base + ".pdf", 50 << 20), result) >= pages
        key = "inbox/" + name
        assert store.get_tags(s.bucket, key) == {"ocrstream-status": "succeeded",
                                                 "ocrstream-document-id": result.document_id}
    report = orjson.loads(store.get_bytes(s.bucket, "outbox/broken.pdf.error.json", 1 << 20))
    assert report["error"]["code"] == "corrupt_document"
    assert store.get_tags(s.bucket, "inbox/broken.pdf")["ocrstream-status"] == "failed"

    # `ocrstream status` / `ocrstream result` read the same results from the compacted topic.
    filing = decode(store.get_bytes(s.bucket, "outbox/scans/filing.pdf.json", 10 << 20), DocumentResult)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ocrstream.cli", *args], env=settings_env(s), cwd=REPO,
                              capture_output=True, timeout=120)

    status = cli("status", filing.document_id)
    assert status.returncode == 0 and f"{filing.document_id} succeeded pages 2/2 " in status.stdout.decode()
    failed = cli("status", report["document_id"])
    assert failed.returncode == 1 and "corrupt_document" in failed.stdout.decode()
    missing = cli("status", "no-such-document")
    assert missing.returncode == 1 and "no result" in missing.stderr.decode()
    hocr = cli("result", filing.document_id, "--format", "hocr")
    assert hocr.returncode == 0 and hocr.stdout == store.get_bytes(s.bucket, "outbox/scans/filing.pdf.hocr", 10 << 20)
    out = tmp_path / "filing.pdf"
    assert cli("result", filing.document_id, "--format", "pdf", "-o", str(out)).returncode == 0
    assert check_searchable_pdf(out.read_bytes(), filing) >= 2

    # A replay (a new group from the beginning) writes the same keys again, nothing more.
    first = {k: store.get_bytes(s.bucket, k, 50 << 20) for k in wanted if not k.endswith(".pdf")}
    stages.stop(sink)
    replay = s.model_copy(update={"group_prefix": s.group_prefix + "replay."})
    stages.start(OutboxSink(replay, StopFlag(install_signals=False)))
    deadline = time.monotonic() + 120
    while not committed_to_end(replay, replay.group("outbox"), s.topic("document-results")):
        assert time.monotonic() < deadline, "the replaying sink did not commit the results topic's end"
        time.sleep(1.0)
    assert {o.key for o in store.list("outbox/")} == wanted | index
    assert {k: store.get_bytes(s.bucket, k, 50 << 20) for k in first} == first

    # A deletion request (tombstone) removes the document's outbox files, and only those.
    photo = decode(first["outbox/photo.png.json"], DocumentResult)
    assert cli("delete", photo.document_id).returncode == 0
    deadline = time.monotonic() + 120
    while any(k.startswith("outbox/photo.png") for k in (o.key for o in store.list("outbox/"))):
        assert time.monotonic() < deadline, "the deleted document's outbox files are still there"
        time.sleep(1.0)
    left = {o.key for o in store.list("outbox/")}
    assert left == {k for k in wanted | index if not k.startswith("outbox/photo.png")} - {
        f"outbox/.ocrstream/index/{photo.document_id}.json"}


def test_hostile_detections_never_break_the_formats():
    """Control characters, coordinates far off the page, degenerate polygons, characters no font has:
    hOCR and ALTO still parse, the PDF is written and carries only what it can say truthfully."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (400, 300), "white").save(buf, "PNG")
    box = [[10, 10], [100, 10], [100, 30], [10, 30]]
    dets = [Detection(text="ctrl\x00\x0b\x0cchars", polygon=box, confidence=0.5),
            Detection(text="huge", polygon=[[1e30, 1e30], [2e30, 1e30], [2e30, 3e30], [1e30, 3e30]], confidence=0.5),
            Detection(text="negative", polygon=[[-100, -100], [-10, -100], [-10, -50], [-100, -50]], confidence=0.5),
            Detection(text="flat", polygon=[[10, 10]] * 4, confidence=0.5),
            Detection(text="   ", polygon=box, confidence=0.5),
            Detection(text="\ufffd\U0001F600 emoji", polygon=[[10, 50], [200, 50], [200, 80], [10, 80]], confidence=0.5)]
    result = DocumentResult(document_id="d", source=ObjectRef(bucket="abc", key="k", filename="a<b>&\x01.png"),
                            status="succeeded", page_count=1, completed_at=0,
                            pages=[Page(page_number=1, width=400, height=300, detections=dets)])
    hocr = ET.fromstring(to_hocr(result))
    assert [e.text for e in hocr.iter(f"{HOCR}span")][0] == "ctrlchars"
    assert ET.fromstring(to_alto(result)).find(f".//{ALTO}fileName").text == "a<b>&.png"
    with pymupdf.open(stream=searchable_pdf(result, buf.getvalue())) as doc:
        text = doc[0].get_text()
    assert "ctrlchars" in text and "?? emoji" in text and "flat" not in text
