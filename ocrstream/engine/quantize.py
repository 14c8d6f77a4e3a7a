"""Int8 detection for OpenVINO: post-training quantization of the PP-OCR detection model.

Detection is most of the CPU time per page. ``OCRSTREAM_DET_INT8=true`` (OpenVINO runtime only)
runs an int8 copy of the detection network, made from the shipped ONNX file by NNCF's
post-training quantization (``nncf.quantize``: min-max ranges from a calibration set, fast bias
correction; https://docs.openvino.ai/latest/openvino-workflow/model-optimization-guide/quantizing-models-post-training.html).
Nothing is downloaded and no weights are kept in the repository: the calibration pages are
generated here (printed text in several fonts and sizes, rendered with PyMuPDF at 150 DPI and
degraded like a scan), and the result is cached as OpenVINO IR under ``OCRSTREAM_MODEL_CACHE_DIR``,
named by a hash of the source model and of this recipe, so it is built once per host (or image).

Recognition stays float: it is a smaller share of the time and text is where int8 errors show.
Speed and word F1 of both are in the README's performance table.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RECIPE = "nncf-ptq-v1-performance-fbc-a4-150dpi"
"""Changes whenever the calibration set or the quantization parameters change (part of the cache key)."""

CALIBRATION_PAGES = 24

_WORDS = ("invoice total amount tax date receipt number cash change balance account payment order "
          "customer address street court filing plaintiff defendant exhibit page section order motion "
          "ledger quantity price item description subtotal discount signature telephone").split()


def calibration_pages(n: int = CALIBRATION_PAGES, seed: int = 0) -> list[np.ndarray]:
    """``n`` A4 pages at 150 DPI (``1755x1240x3 uint8 BGR``) of printed text: lines of words and
    figures in Helvetica / Times / Courier, 9-22 pt, some bold headings, slightly rotated, on grey
    paper with blur and noise like a scan. Deterministic for a seed."""
    import pymupdf

    rng = np.random.default_rng(seed)
    fonts = ("helv", "tiro", "cour", "hebo")
    pages = []
    for _ in range(n):
        doc = pymupdf.open()
        page = doc.new_page(width=595, height=842)  # A4 in points
        y = 50.0
        while y < 800:
            size = float(rng.choice([9, 10, 11, 12, 14, 16, 18, 22]))
            words = [str(rng.choice(_WORDS)) if rng.random() < 0.75 else f"{rng.integers(1, 99999)}.{rng.integers(0, 99):02d}"
                     for _ in range(int(rng.integers(1, 9)))]
            page.insert_text((40 + float(rng.integers(0, 120)), y), " ".join(words).upper() if rng.random() < 0.3
                             else " ".join(words), fontsize=size, fontname=str(rng.choice(fonts)))
            y += size * float(rng.uniform(1.4, 3.0))
        pix = page.get_pixmap(dpi=150, colorspace=pymupdf.csGRAY)
        grey = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width).astype(np.float32)
        grey = grey * float(rng.uniform(0.8, 0.95)) + float(rng.uniform(5, 30))  # grey paper, less contrast
        grey += rng.normal(0, float(rng.uniform(2, 8)), grey.shape)  # sensor noise
        img = np.clip(grey, 0, 255).astype(np.uint8)
        pages.append(np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2)))
    return pages


def int8_detection_model(source: Path, cache_dir: Path, preprocess) -> Path:
    """The int8 OpenVINO IR (``.xml``) of detection model ``source`` (ONNX), built on first use.

    Args:
        source: the float detection model (ONNX).
        cache_dir: where built models are kept.
        preprocess: ``(HxWx3 uint8 BGR page) -> 1x3xHxW float32`` network input: the engine's own
            detection pre-processing, so the calibration sees exactly what inference will.

    Raises:
        ImportError: ``nncf`` is not installed (``pip install 'ocrstream[int8]'``).
    """
    pages = CALIBRATION_PAGES
    digest = hashlib.sha256(source.read_bytes() + f"{RECIPE}-{pages}pages".encode()).hexdigest()[:16]
    target = cache_dir / f"{source.stem}.int8-{digest}.xml"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Workers started together build once: the others wait on the lock, then find the model.
    with open(cache_dir / f".{target.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        import nncf
        import openvino as ov

        log.warning("building the int8 detection model %s (once; takes a few minutes)", target.name)
        inputs = [preprocess(page) for page in calibration_pages(pages)]
        model = ov.Core().read_model(source)
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout is for results (JSON)
            quantized = nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs),
                                      preset=nncf.QuantizationPreset.PERFORMANCE, fast_bias_correction=True)
        tmp = target.with_name(f".tmp-{target.name}")
        ov.save_model(quantized, tmp, compress_to_fp16=False)
        tmp.with_suffix(".bin").rename(target.with_suffix(".bin"))  # weights first, then the file we test for
        tmp.rename(target)
        log.warning("int8 detection model ready: %s (nncf %s)", target, metadata.version("nncf"))
    return target
