"""Page orientation (``OCRSTREAM_PAGE_ORIENTATION=auto``): what it costs on upright pages and how
turned pages read. Prints a JSON summary on stdout (progress on stderr).

1. Cost: every upright page (SROIE receipts, scanned court filings at 150 DPI) is read once
   with orientation off; the rule of :mod:`ocrstream.engine.orientation` then says which pages
   ``auto`` would read again (the same engine output, so the same decision). Those pages are read
   with ``auto``: the engine time of the readings it did not keep (``orientation_ms``) over the
   engine time of all pages read once (det + rec ms) is the cost, and a page ``auto`` turned
   although it was upright is a false turn.
2. Turned pages: the first ``--turned`` receipts and scan pages, stored turned by 90, 180 and
   270 degrees, read with ``auto``: how many read exactly the upright page's text with the right
   ``rotation``.

    python bench/orientation.py [--receipts DIR] [--scans DIR] [--turned 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ocrstream.engine import create_engine  # noqa: E402
from ocrstream.engine.orientation import OrientingEngine, second_readings, turn  # noqa: E402
from ocrstream.settings import Settings  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pages(receipts: Path, scans: Path, dpi: int = 150):
    """Yield ``(name, HxWx3 uint8 BGR)`` for every receipt and every scanned page."""
    import cv2
    import pymupdf

    for p in sorted(receipts.glob("*.jpg")):
        yield f"receipt {p.stem}", cv2.imread(str(p))
    for p in sorted(scans.glob("*.pdf")):
        with pymupdf.open(p) as doc:
            for n, page in enumerate(doc, 1):
                pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csRGB, alpha=False)
                rgb = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.stride)[:, :pix.width * 3]
                yield f"{p.stem} p{n}", np.ascontiguousarray(rgb.reshape(pix.height, pix.width, 3)[:, :, ::-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--receipts", type=Path, default=SHARED / "sroie-dev")
    ap.add_argument("--scans", type=Path, default=SHARED / "scans-dev")
    ap.add_argument("--turned", type=int, default=5, help="receipts and scan pages to read turned (each)")
    args = ap.parse_args()
    s = Settings(engine_threads=1, page_orientation="off")
    inner = create_engine(s)
    auto = OrientingEngine(inner, Settings().orientation_min_confidence)
    total_ms, extra_ms, triggered, false_turns, n = 0.0, 0.0, [], [], 0
    turned_ok, turned_n = {90: 0, 180: 0, 270: 0}, 0
    kinds_turned: dict[str, int] = {"receipt": 0, "scan": 0}
    for name, img in pages(args.receipts, args.scans):
        n += 1
        first = inner.ocr_batch([img])[0]
        total_ms += first.timings_ms.get("det_ms", 0.0) + first.timings_ms.get("rec_ms", 0.0)
        if second_readings(first, auto.min_confidence):
            again = auto.ocr_batch([img])[0]
            extra_ms += again.timings_ms.get("orientation_ms", 0.0)  # the readings not kept: the cost
            triggered.append(name)
            if again.rotation:
                false_turns.append(f"{name}: {again.rotation}")
        kind = "receipt" if name.startswith("receipt") else "scan"
        if kinds_turned[kind] < args.turned:
            kinds_turned[kind] += 1
            turned_n += 1
            want = [line.text for line in first.lines]
            for cw in (90, 180, 270):
                res = auto.ocr_batch([turn(img, 360 - cw)])[0]
                turned_ok[cw] += res.rotation == cw and [line.text for line in res.lines] == want
        log(f"{name}: {len(first.lines)} lines{' (read again)' if triggered and triggered[-1] == name else ''}")
    print(json.dumps({
        "pages": n, "read_again": len(triggered), "read_again_pages": triggered[:20],
        "false_turns": false_turns, "engine_ms_upright": round(total_ms), "extra_ms": round(extra_ms),
        "cost_pct": round(100 * extra_ms / total_ms, 2) if total_ms else None,
        "turned_pages": turned_n, "turned_read_same": turned_ok,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
