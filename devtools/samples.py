"""Sample documents with known text, for demos, tests and accuracy benchmarks.

:func:`make_samples` writes, deterministically from a seed (same seed, same
bytes):

* ``invoice.pdf``: born-digital, A4, 2 pages (Helvetica 11-14 pt);
* ``letter.pdf``: born-digital, US Letter, 3 pages (Times 12 pt);
* ``memo-scan.jpg``: one scan-like page, RGB JPEG;
* ``notice-scan.png``: one scan-like page, greyscale PNG;
* ``report-scan.tif``: two scan-like pages, greyscale multi-page TIFF.

Scan-like pages are A4 text pages (Helvetica 13-18 pt) rendered at 150 DPI
(1240 x 1755 pixels) with PyMuPDF and then degraded like a scan: slight rotation (0.4 to 1.2 degrees, random sign), grey paper with a
faint illumination gradient, gaussian blur, gaussian noise and a JPEG
compression round trip (or the JPEG file's own compression).

Every document ``NAME.EXT`` gets a ground-truth sidecar ``NAME.txt`` holding
its text lines, one per line, pages separated by a line that holds only a form
feed (``\\f``). Read it back with :func:`read_truth`. Table rows that are laid
out in columns are written as one line with the cells separated by single
spaces; compare texts after whitespace normalisation
(:func:`devtools.textmetrics.normalize_whitespace`), as
:func:`devtools.textmetrics.cer` does.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image, ImageFilter

__all__ = ["SCAN_DPI", "make_samples", "read_truth", "truth_path"]

SCAN_DPI = 150
"""Resolution (DPI) at which the scan-like images are rendered and tagged."""

A4 = (595, 842)
LETTER = (612, 792)
_MARGIN = 64.0
# Fixed metadata: no timestamps or random ids, so files are byte-for-byte reproducible.
_METADATA = {
    "title": "", "author": "ocrstream samples", "subject": "", "keywords": "",
    "creator": "ocrstream.samples", "producer": "PyMuPDF",
    "creationDate": "D:20240101000000Z", "modDate": "D:20240101000000Z",
}


# --------------------------------------------------------------------------- layout

@dataclass
class _Line:
    """One text line on a page: ``cells`` are drawn at ``xs`` (points from the left edge)."""

    cells: list[str]
    font: str = "helv"
    size: float = 12.0
    xs: list[float] | None = None
    y: float = 0.0  # baseline, points from the top edge

    @property
    def text(self) -> str:
        return " ".join(self.cells)


@dataclass
class _Page:
    size: tuple[int, int]
    lines: list[_Line] = field(default_factory=list)


class _Writer:
    """Flows lines and wrapped paragraphs onto pages of a fixed size."""

    def __init__(self, size: tuple[int, int], font: str, fontsize: float, leading: float = 1.55):
        self.size, self.font, self.fontsize, self.leading = size, font, fontsize, leading
        self.pages: list[_Page] = [_Page(size)]
        self._y = _MARGIN

    @property
    def width(self) -> float:
        return self.size[0] - 2 * _MARGIN

    def new_page(self) -> None:
        self.pages.append(_Page(self.size))
        self._y = _MARGIN

    def line(self, *cells: str, font: str | None = None, size: float | None = None,
             xs: list[float] | None = None, gap: float = 0.0) -> None:
        size = size or self.fontsize
        if self._y + gap + size * self.leading > self.size[1] - _MARGIN:
            self.new_page()
            gap = 0.0
        self._y += gap + size * self.leading
        self.pages[-1].lines.append(_Line(list(cells), font or self.font, size, xs, self._y))

    def paragraph(self, text: str, gap: float = 8.0) -> None:
        font, size = self.font, self.fontsize
        cur: list[str] = []
        first = True
        for word in text.split():
            trial = " ".join(cur + [word])
            if cur and pymupdf.get_text_length(trial, fontname=font, fontsize=size) > self.width:
                self.line(" ".join(cur), gap=gap if first else 0.0)
                first, cur = False, [word]
            else:
                cur.append(word)
        if cur:
            self.line(" ".join(cur), gap=gap if first else 0.0)


def _draw(doc: pymupdf.Document, pages: list[_Page]) -> None:
    """Draw the pages into ``doc`` with ``insert_text`` (one call per cell)."""
    for spec in pages:
        page = doc.new_page(width=spec.size[0], height=spec.size[1])
        for ln in spec.lines:
            for x, cell in zip(ln.xs or [_MARGIN], ln.cells):
                page.insert_text((x, ln.y), cell, fontname=ln.font, fontsize=ln.size)


def _save_pdf(pages: list[_Page], path: Path) -> None:
    doc = pymupdf.open()
    _draw(doc, pages)
    doc.set_metadata(_METADATA)
    doc.save(path, garbage=3, deflate=True, no_new_id=True)
    doc.close()


def _write_truth(pages: list[_Page], doc_path: Path) -> None:
    truth = "\n\f\n".join("\n".join(ln.text for ln in p.lines) for p in pages) + "\n"
    truth_path(doc_path).write_text(truth, encoding="utf-8")


def truth_path(doc_path: str | Path) -> Path:
    """The ground-truth sidecar of a sample document (``invoice.pdf`` -> ``invoice.txt``)."""
    return Path(doc_path).with_suffix(".txt")


def read_truth(path: str | Path) -> list[str]:
    """Read a ground-truth sidecar written by :func:`make_samples`.

    Args:
        path: the sidecar (``NAME.txt``) or the document it describes.

    Returns:
        one string per page, that page's lines joined with newlines.

    Raises:
        OSError: the sidecar cannot be read.
    """
    p = Path(path)
    if p.suffix != ".txt":
        p = truth_path(p)
    pages = p.read_text(encoding="utf-8").split("\n\f\n")
    return [page.strip("\n") for page in pages]


# --------------------------------------------------------------------------- content

_COMPANIES = ["Northwind Traders Ltd", "Harbor Point Supply Co", "Bluebell Office Works",
              "Granite Ridge Tools Inc", "Maple Leaf Logistics", "Silver Creek Electric"]
_CUSTOMERS = ["Riverside Dental Clinic", "Oakwood Primary School", "Summit Bakery",
              "Lakeside Printing House", "Westfield Community Center", "Pine Street Library"]
_STREETS = ["Station Road", "Mill Lane", "Queen Street", "Harbour View", "Elm Avenue", "Church Street"]
_CITIES = ["Springfield", "Riverton", "Fairview", "Kingsbridge", "Ashford", "Milton"]
_PEOPLE = ["Margaret Collins", "David Thompson", "Sarah Mitchell", "James Walker",
           "Emily Parker", "Robert Hughes", "Laura Bennett", "Thomas Reed"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_ITEMS = [
    ("A4 copier paper, 500 sheets", 4.85), ("Blue ballpoint pens, box of 50", 12.40),
    ("Stapler, heavy duty", 18.90), ("Lever arch files, pack of 10", 21.75),
    ("Desk lamp with LED bulb", 34.20), ("Printer toner cartridge", 79.99),
    ("Whiteboard markers, set of 8", 9.60), ("Office chair, adjustable", 149.00),
    ("USB flash drive 64 GB", 11.25), ("Cable ties, pack of 100", 3.95),
    ("Extension lead, 4 sockets", 15.50), ("Label printer tape", 16.80),
    ("Envelopes C5, box of 500", 23.40), ("Filing cabinet, 3 drawers", 189.00),
    ("Laminating pouches A4", 13.70), ("Hand sanitiser, 5 litres", 27.35),
]


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(2021, 2025)}"


def _address(rng: random.Random) -> list[str]:
    return [f"{rng.randint(2, 240)} {rng.choice(_STREETS)}",
            f"{rng.choice(_CITIES)} {rng.randint(10000, 99999)}"]


def _invoice(rng: random.Random) -> list[_Page]:
    w = _Writer(A4, "helv", 11)
    seller, buyer = rng.choice(_COMPANIES), rng.choice(_CUSTOMERS)
    number = f"INV-{rng.randint(2021, 2025)}-{rng.randint(1000, 9999)}"
    w.line(seller, font="hebo", size=14)
    for a in _address(rng):
        w.line(a)
    w.line(f"Phone {rng.randint(200, 999)} {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}")
    w.line("INVOICE", font="hebo", size=14, gap=12)
    w.line(f"Invoice number: {number}")
    w.line(f"Invoice date: {_date(rng)}")
    w.line(f"Customer account: {rng.randint(100000, 999999)}")
    w.line("Bill to:", font="hebo", gap=8)
    w.line(buyer)
    for a in _address(rng):
        w.line(a)
    w.paragraph(f"Goods delivered on {_date(rng)} to the loading bay at the rear of the "
                f"building, order reference PO-{rng.randint(10000, 99999)}, in "
                f"{rng.randint(2, 9)} boxes with a total weight of {rng.randint(12, 95)} kg.", gap=10)
    cols = [_MARGIN, _MARGIN + 250, _MARGIN + 310, _MARGIN + 390]
    w.line("Description", "Qty", "Unit price", "Amount", font="hebo", xs=cols, gap=12)
    items = rng.sample(_ITEMS, 14)
    subtotal = 0.0
    for i, (name, price) in enumerate(items):
        if i == 9:
            w.new_page()
            w.line(f"Invoice {number} continued", font="hebo", size=12)
            w.line("Description", "Qty", "Unit price", "Amount", font="hebo", xs=cols, gap=8)
        qty = rng.randint(1, 24)
        amount = round(qty * price, 2)
        subtotal += amount
        w.line(name, str(qty), f"{price:.2f}", f"{amount:.2f}", xs=cols)
    tax = round(subtotal * 0.2, 2)
    w.line("Subtotal", f"{subtotal:.2f}", xs=[cols[2], cols[3]], gap=8)
    w.line("VAT 20%", f"{tax:.2f}", xs=[cols[2], cols[3]])
    w.line("Total due", f"{subtotal + tax:.2f}", font="hebo", xs=[cols[2], cols[3]])
    days = rng.choice([14, 30, 45])
    w.line("Payment terms", font="hebo", size=12, gap=14)
    w.paragraph(f"Please pay the total amount within {days} days of the invoice date by bank "
                f"transfer to account number {rng.randint(10000000, 99999999)}, sort code "
                f"{rng.randint(10, 99)}-{rng.randint(10, 99)}-{rng.randint(10, 99)}, quoting the "
                f"invoice number {number} as the payment reference.")
    w.paragraph(f"Late payments may be charged interest at {rng.randint(2, 8)} percent per month. "
                f"Goods remain our property until paid in full. For questions about this invoice "
                f"call our accounts team on weekdays between 9 and 5.")
    return w.pages


_LETTER_PARAGRAPHS = [
    "Thank you for your letter of {date} about the renovation of the east wing. We have "
    "reviewed the plans with our engineers and we are pleased to confirm that the work can "
    "start in {month}, as you proposed.",
    "The revised estimate comes to {money} for labour and materials, which is {pct} percent "
    "lower than the first quote. The saving comes mainly from reusing {n1} of the existing "
    "steel beams and from ordering the windows in a single batch of {n2} units.",
    "Our crew of {n3} people will work from 8 in the morning until 5 in the afternoon, Monday "
    "to Friday. Noisy work such as drilling will be kept to the hours between 10 and 3 so that "
    "the classes in the west wing are not disturbed.",
    "Before we begin, we need a signed copy of the contract and a deposit of {deposit}. The "
    "remaining balance will be invoiced in {parts} equal parts as each stage of the work is "
    "completed and approved by your site manager.",
    "The project is planned to take {weeks} weeks. We have allowed {spare} extra days for bad "
    "weather, and we will send you a short progress report every Friday with photographs of "
    "the finished work and the plan for the following week.",
    "All our staff hold valid safety certificates, and the site will be fenced off from the "
    "rest of the building at all times. Access for deliveries will be through the north gate "
    "on {street}, which we will keep clear from 7 in the morning.",
    "Please note that the price of timber has risen by {pct2} percent since January. The "
    "estimate holds for {valid} days from the date of this letter; after that we may need to "
    "review the cost of materials with you again.",
    "If you would like to discuss any part of the plan, I would be glad to meet you on site. "
    "I am available on most weekday mornings and can be reached on {phone} or by post at the "
    "address above.",
    "We have worked on {jobs} school buildings in the region over the last {years} years, and "
    "we understand how important it is to finish on time and leave the site clean and safe "
    "for the pupils and teachers.",
    "Finally, we would like to thank you and your colleagues for your patience during the "
    "survey in {month2}. The measurements taken then have made this estimate far more "
    "accurate than we could otherwise have achieved.",
]


def _letter(rng: random.Random) -> list[_Page]:
    w = _Writer(LETTER, "tiro", 12, leading=1.5)
    sender, recipient = rng.sample(_PEOPLE, 2)
    w.line(rng.choice(_COMPANIES), font="tibo", size=14)
    for a in _address(rng):
        w.line(a)
    w.line(_date(rng), gap=14)
    w.line(recipient, gap=14)
    w.line(f"{rng.choice(_CUSTOMERS)}")
    for a in _address(rng):
        w.line(a)
    w.line(f"Reference: {rng.choice('ABCDEFGH')}{rng.randint(100, 999)}/{rng.randint(10, 99)}", gap=14)
    w.line(f"Dear {recipient.split()[0]},", gap=14)
    values = dict(
        date=_date(rng), month=rng.choice(_MONTHS), month2=rng.choice(_MONTHS),
        money=f"${rng.randint(40, 400)},{rng.randint(100, 999)}",
        deposit=f"${rng.randint(5, 40)},{rng.randint(100, 999)}",
        pct=rng.randint(5, 18), pct2=rng.randint(3, 15), n1=rng.randint(12, 40), n2=rng.randint(20, 90),
        n3=rng.randint(6, 25), parts=rng.choice(["three", "four", "five"]), weeks=rng.randint(10, 30),
        spare=rng.randint(5, 15), street=rng.choice(_STREETS), valid=rng.choice([30, 60, 90]),
        phone=f"{rng.randint(200, 999)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
        jobs=rng.randint(12, 60), years=rng.randint(8, 30),
    )
    for p in _LETTER_PARAGRAPHS:
        w.paragraph(p.format(**values), gap=10)
    w.line("Yours sincerely,", gap=16)
    w.line(sender, gap=24)
    w.line("Project Manager")
    w.line("Enclosure: schedule of works", gap=8)
    if len(w.pages) > 2:  # layout guard: the schedule is documented as page 3
        raise AssertionError(f"letter body laid out on {len(w.pages)} pages, expected at most 2")
    while len(w.pages) < 2:
        w.new_page()
    w.new_page()
    w.line("Schedule of works", font="tibo", size=14)
    stages = ["Site survey and fencing", "Removal of the old roof", "Steel frame repairs",
              "New roof and insulation", "Windows and doors", "Electrical wiring",
              "Plastering and painting", "Final inspection and cleaning"]
    start = rng.randint(1, 20)
    total = 0
    for i, stage in enumerate(stages, 1):
        cost = rng.randint(20, 400) * 50
        total += cost
        w.line(f"Stage {i}: {stage}, week {start}, cost ${cost:,}", gap=8 if i == 1 else 0.0)
        start += rng.randint(1, 4)
    w.line(f"Total of all stages: ${total:,}", font="tibo", gap=8)
    w.paragraph("Dates are planned start weeks and may move by up to one week. Each stage is "
                "inspected before the next one begins.", gap=10)
    return w.pages


def _memo(rng: random.Random) -> list[_Page]:
    w = _Writer(A4, "helv", 13, leading=1.7)
    w.line("MEMORANDUM", font="hebo", size=16)
    w.line(f"To: All staff at the {rng.choice(_CITIES)} office", gap=10)
    w.line(f"From: {rng.choice(_PEOPLE)}, Facilities")
    w.line(f"Date: {_date(rng)}")
    w.line(f"Subject: Building maintenance on floor {rng.randint(2, 9)}")
    w.paragraph(f"The heating system on floors {rng.randint(2, 4)} to {rng.randint(5, 9)} will be "
                f"serviced next week. Engineers will arrive at {rng.randint(7, 9)}:30 each morning "
                f"and expect to finish by {rng.randint(3, 5)}:00 in the afternoon.", gap=16)
    w.paragraph(f"Please clear the area within 1 metre of every radiator before Monday. About "
                f"{rng.randint(40, 120)} radiators will be checked, and {rng.randint(5, 20)} of "
                f"them will be replaced with new models that use {rng.randint(15, 35)} percent "
                f"less energy.")
    w.paragraph(f"Meeting room {rng.randint(100, 499)} will be closed on Wednesday. Bookings have "
                f"been moved to room {rng.randint(500, 899)} on the ground floor.")
    w.paragraph(f"If you have questions, call extension {rng.randint(1000, 9999)} or visit the "
                f"facilities desk next to the main entrance. Thank you for your help.")
    return w.pages


def _notice(rng: random.Random) -> list[_Page]:
    w = _Writer(A4, "helv", 14, leading=1.7)
    w.line("PUBLIC NOTICE", font="hebo", size=18)
    w.line(f"Road closure on {rng.choice(_STREETS)}", font="hebo", size=14, gap=10)
    w.paragraph(f"From {_date(rng)} the road between numbers {rng.randint(1, 40)} and "
                f"{rng.randint(50, 120)} will be closed to all traffic for {rng.randint(3, 12)} "
                f"weeks while the water main is replaced.", gap=14)
    w.paragraph(f"Bus routes {rng.randint(1, 30)} and {rng.randint(31, 90)} will follow a "
                f"diversion through {rng.choice(_STREETS)}. Temporary stops will be marked with "
                f"yellow signs.")
    w.paragraph(f"Residents can still reach their homes on foot. Parking permits for the area "
                f"remain valid in zone {rng.choice('ABCDEFG')}{rng.randint(1, 9)}.")
    w.line(f"Enquiries: {rng.randint(200, 999)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}",
           gap=14)
    w.line(f"Reference number: RW/{rng.randint(1000, 9999)}/{rng.randint(10, 99)}")
    return w.pages


def _report(rng: random.Random) -> list[_Page]:
    w = _Writer(A4, "helv", 13, leading=1.7)
    year = rng.randint(2021, 2025)
    w.line(f"Quarterly Sales Report Q{rng.randint(1, 4)} {year}", font="hebo", size=16)
    w.line(f"Prepared by {rng.choice(_PEOPLE)} on {_date(rng)}", gap=6)
    w.paragraph(f"Total sales for the quarter reached {rng.randint(200, 900)},{rng.randint(100, 999)} "
                f"dollars, an increase of {rng.randint(2, 19)} percent over the same quarter last "
                f"year. The number of orders rose from {rng.randint(1000, 4000)} to "
                f"{rng.randint(4001, 8000)}.", gap=14)
    cols = [_MARGIN, _MARGIN + 200, _MARGIN + 330]
    w.line("Region", "Orders", "Revenue", font="hebo", xs=cols, gap=12)
    for region in ["North", "South", "East", "West", "Central"]:
        w.line(region, str(rng.randint(300, 2500)), f"{rng.randint(20, 300)},{rng.randint(100, 999)}",
               xs=cols)
    w.new_page()
    w.line("Outlook and actions", font="hebo", size=16)
    w.paragraph(f"We expect demand to stay strong in the next quarter. The team plans to open "
                f"{rng.randint(2, 6)} new branches and to hire {rng.randint(10, 40)} more sales "
                f"staff by the end of {year}.", gap=14)
    w.paragraph(f"Delivery times fell to an average of {rng.randint(2, 5)} days, and customer "
                f"complaints dropped by {rng.randint(10, 40)} percent after the new warehouse in "
                f"{rng.choice(_CITIES)} opened.")
    w.paragraph(f"Action 1: review prices of the top {rng.randint(10, 50)} products by the end of "
                f"the month. Action 2: publish the next report on {_date(rng)}.")
    return w.pages


# --------------------------------------------------------------------------- scans

def _render_pages(pages: list[_Page]) -> list[np.ndarray]:
    """Render page specs at :data:`SCAN_DPI` to greyscale ``HxW uint8`` arrays."""
    doc = pymupdf.open()
    _draw(doc, pages)
    out = []
    for page in doc:
        pix = page.get_pixmap(dpi=SCAN_DPI, colorspace=pymupdf.csGRAY, alpha=False)
        out.append(np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width).copy())
    doc.close()
    return out


def _degrade(grey: np.ndarray, rng: np.random.Generator, jpeg_quality: int | None) -> Image.Image:
    """Make a clean greyscale render look scanned; returns a mode ``L`` image."""
    h, w = grey.shape
    paper = float(rng.uniform(212, 232))
    ink = float(rng.uniform(25, 55))
    # Ink/paper contrast, plus a faint left-to-right illumination gradient.
    g = grey.astype(np.float32) / 255.0
    img = ink + (paper - ink) * g
    img *= np.linspace(1.0, float(rng.uniform(0.93, 0.98)), w, dtype=np.float32)[None, :]
    angle = float(rng.uniform(0.4, 1.2)) * (1 if rng.random() < 0.5 else -1)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L")
    pil = pil.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=int(paper))
    pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 0.8))))
    arr = np.asarray(pil, dtype=np.float32) + rng.normal(0.0, float(rng.uniform(5, 9)), size=(h, w))
    pil = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if jpeg_quality is not None:  # compression artefacts, also for lossless output formats
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=jpeg_quality)
        pil = Image.open(io.BytesIO(buf.getvalue()))
        pil.load()
    return pil


def _tint(pil: Image.Image) -> Image.Image:
    """Greyscale to slightly warm RGB paper (as a colour scanner sees it)."""
    a = np.asarray(pil, dtype=np.float32)
    rgb = np.stack([a * 1.0, a * 0.985, a * 0.95], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- entry point

def make_samples(outdir: Path, seed: int = 0) -> list[Path]:
    """Write the sample documents and their ground-truth sidecars into ``outdir``.

    The same seed gives byte-identical files. ``outdir`` is created if needed;
    existing files of the same names are overwritten.

    Args:
        outdir: target folder.
        seed: content and degradation seed.

    Returns:
        the document paths (not the sidecars), in this order: ``invoice.pdf``
        (2 pages), ``letter.pdf`` (3 pages), ``memo-scan.jpg``,
        ``notice-scan.png``, ``report-scan.tif`` (2 frames).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    paths: list[Path] = []

    for name, make, count in (("invoice.pdf", _invoice, 2), ("letter.pdf", _letter, 3)):
        pages = make(rng)
        if len(pages) != count:  # layout guard: page counts are documented above
            raise AssertionError(f"{name} laid out on {len(pages)} pages, expected {count}")
        path = outdir / name
        _save_pdf(pages, path)
        _write_truth(pages, path)
        paths.append(path)

    memo = _memo(rng)
    path = outdir / "memo-scan.jpg"
    img = _tint(_degrade(_render_pages(memo)[0], np_rng, jpeg_quality=None))
    img.save(path, format="JPEG", quality=72, dpi=(SCAN_DPI, SCAN_DPI))
    _write_truth(memo, path)
    paths.append(path)

    notice = _notice(rng)
    path = outdir / "notice-scan.png"
    img = _degrade(_render_pages(notice)[0], np_rng, jpeg_quality=80)
    img.save(path, format="PNG", dpi=(SCAN_DPI, SCAN_DPI))
    _write_truth(notice, path)
    paths.append(path)

    report = _report(rng)
    if len(report) != 2:  # layout guard: the TIFF is documented as 2 frames
        raise AssertionError(f"report sample laid out on {len(report)} pages, expected 2")
    path = outdir / "report-scan.tif"
    frames = [_degrade(g, np_rng, jpeg_quality=80) for g in _render_pages(report)]
    frames[0].save(path, format="TIFF", save_all=True, append_images=frames[1:],
                   compression="tiff_deflate", dpi=(SCAN_DPI, SCAN_DPI))
    _write_truth(report, path)
    paths.append(path)
    return paths
