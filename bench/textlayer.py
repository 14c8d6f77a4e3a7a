"""Text-layer fast path (``OCRSTREAM_TEXT_LAYER=auto``): which pages take it, how exact and how
fast it is. Prints a JSON summary on stdout.

For every page of the given PDFs: the decision (:func:`ocrstream.textlayer.qualifies`); for
pages that take the fast path, the character error rate of their detections' text against the
page's own ``get_text()`` (whitespace-normalised, :func:`devtools.textmetrics.cer`) and against
ground truth where a sidecar exists (the generated samples of :mod:`devtools.samples`); ms/page of
the fast path (decision + lines) and, on ``--ocr N`` of those pages, of the OCR path (render at
150 DPI + the engine) for the ratio.

    python bench/textlayer.py [--samples] [--ocr 4] FILE.pdf ...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pymupdf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.textmetrics import cer  # noqa: E402
from ocrstream.documents import render_pdf_page  # noqa: E402
from ocrstream.textlayer import qualifies, read_text_layer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pdfs", nargs="*", type=Path)
    ap.add_argument("--samples", action="store_true", help="also the generated born-digital samples (known text)")
    ap.add_argument("--ocr", type=int, default=4, help="fast-path pages also OCR'd, for the speed ratio")
    ap.add_argument("--dpi", type=int, default=150)
    args = ap.parse_args()
    pdfs = list(args.pdfs)
    truth: dict[Path, list[str]] = {}
    if args.samples:
        from devtools.samples import make_samples, read_truth

        out = Path(tempfile.mkdtemp(prefix="textlayer-"))
        for p in make_samples(out):
            if p.suffix == ".pdf":
                pdfs.append(p)
                truth[p] = read_truth(p)
    summary: dict = {}
    engine = None
    ocr_left = args.ocr
    for path in pdfs:
        fast, reasons, cers, truth_cers, fast_ms, ocr_ms = 0, {}, [], [], [], []
        with pymupdf.open(path) as doc:
            for n, page in enumerate(doc):
                t = time.perf_counter()
                res = read_text_layer(page, args.dpi)
                fast_ms.append((time.perf_counter() - t) * 1000)
                if res is None:
                    why = qualifies(page)[1].split(" (")[0]
                    reasons[why] = reasons.get(why, 0) + 1
                    continue
                fast += 1
                text = "\n".join(line.text for line in res.lines)
                cers.append(cer(text, page.get_text()))
                if path in truth:
                    truth_cers.append(cer(text, truth[path][n]))
                if ocr_left > 0:
                    if engine is None:
                        from ocrstream.engine import create_engine
                        from ocrstream.settings import Settings

                        engine = create_engine(Settings(engine_threads=1))
                    t = time.perf_counter()
                    engine.ocr_batch([render_pdf_page(doc, n + 1, args.dpi, 100_000_000)])
                    ocr_ms.append((time.perf_counter() - t) * 1000)
                    ocr_left -= 1
            pages = doc.page_count
        summary[path.name] = {
            "pages": pages, "fast_path": fast, "ocr": reasons,
            "cer_vs_get_text_max": round(max(cers), 5) if cers else None,
            "cer_vs_truth_max": round(max(truth_cers), 5) if truth_cers else None,
            "fast_ms_per_page": round(float(np.mean(fast_ms)), 2) if fast_ms else None,
            "ocr_ms_per_page": round(float(np.mean(ocr_ms)), 1) if ocr_ms else None,
        }
        print(f"{path.name}: {fast}/{pages} fast path", file=sys.stderr)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
