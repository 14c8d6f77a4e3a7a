"""The content-hash result cache: what shapes a document's OCR output, and its cache key.

A document whose bytes, tenant and output-shaping configuration equal an earlier document's gets
that document's pages without OCR (the splitter publishes its result from the compacted
``result-cache`` topic, see ``consumers/result_cache.py``). The key is two digests, one from
each side of the pipeline, because each side knows only its own half for sure:

- :func:`request_digest` (the **splitter**, per document): tenant, SHA-256 of the object's bytes,
  the effective DPI, the requested pages. The splitter puts it on every page task
  (``PageTask.cache_request``).
- :func:`output_fingerprint` (each **OCR worker**, from its own settings and installed packages):
  profile, engine identity (runtimes, model files, package versions, the code that produces
  pages) and every setting that changes the pages it writes. The worker combines the task's
  request digest with *its own* fingerprint into ``PageResult.cache_key`` (:func:`cache_key`),
  and the assembler stores a succeeded document under the key its pages agree on. Each worker
  also reports its fingerprint digest in its metrics samples (``WorkerMetrics.output_fingerprint``).

So an entry is always keyed by what really produced it, and for a lookup the splitter uses the
fingerprint the live workers report (never one computed from its own settings, which may differ
from theirs: another image, an engine setting given to the workers only). Where the workers do
not all report the same fingerprint, or none is live, the document is simply OCR'd: the cache
can fail to help, never return pages another configuration produced.

Key material is canonical JSON (sorted keys, no spaces, ASCII) hashed with SHA-256; every
digest is 64 lower-case hex characters. :data:`CACHE_FORMAT` is part of both halves: raising
it orphans every entry (they expire with the TTL).
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from .settings import Settings

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of the key scheme and of the cached value (``schemas.CachedResult``)."""

DEFAULT_PROFILE = "default"
"""The profile name of a deployment without model profiles."""

# Distributions whose version changes pages, per runtime (``resolve_runtime``). Module names are
# not enough: ``onnxruntime`` and ``onnxruntime-gpu`` install the same module.
_COMMON_PACKAGES = ("numpy", "opencv-python", "opencv-python-headless", "pymupdf", "pillow")
_RUNTIME_PACKAGES = {
    "onnxruntime": ("rapidocr", "onnxruntime", "onnxruntime-gpu"),
    "openvino": ("rapidocr", "openvino"),
    # torch: ONNX Runtime loads the models (and reads the recognizer's characters), onnx and
    # onnx2torch rewrite and convert the graphs, torch runs them.
    "torch": ("rapidocr", "onnxruntime", "torch", "onnx", "onnx2torch"),
    "paddle": ("paddleocr", "paddlepaddle", "paddlepaddle-gpu", "rapidocr_paddle", "paddlex"),
    "none": (),
}
# The code that turns a page task into a page's detections, as paths from the directory that holds
# the top-level packages (a checkout, or site-packages): read as files, never imported (the
# worker's modules are above this layer). A file that is absent counts as absent.
_OUTPUT_CODE = ("ocrstream/engine/*.py", "ocrstream/textlayer.py", "ocrstream/documents.py", "ocrstream/slices.py",
                "consumers/pages.py", "consumers/worker/results.py")


def canonical_digest(material: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``material`` as canonical JSON (sorted keys, ``,``/``:`` separators, ASCII).

    Raises:
        TypeError: a value is not JSON-serialisable.
    """
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def content_digest(data: bytes) -> str:
    """SHA-256 (hex) of a document's bytes, as downloaded by the splitter."""
    return hashlib.sha256(data).hexdigest()


def request_digest(*, tenant: str | None, content_sha256: str, dpi: int | None, page_range: str | None) -> str:
    """The splitter's half of the cache key: what it decides about one document.

    Args:
        tenant: the tenant whose ingest topic the reference came from (None: the default
            tenant). In the key so that **no hit ever crosses tenants**: the same bytes of two
            tenants are two entries.
        content_sha256: :func:`content_digest` of the object's bytes: the document itself (not
            its name, key or ETag, so the same file uploaded twice under other names is one entry).
        dpi: the render DPI the page tasks carry (``options.dpi`` or ``OCRSTREAM_RENDER_DPI`` for
            a PDF; None for images): pixels, and so polygons and text, depend on it.
        page_range: the canonical requested pages (``"1-3,7"``) or None for every page: the
            result lists exactly those pages.

    Returns:
        64 hex characters.
    """
    return canonical_digest({"format": CACHE_FORMAT, "tenant": tenant, "content_sha256": content_sha256,
                             "dpi": dpi, "page_range": page_range})


def output_fingerprint(s: Settings, profile: str = DEFAULT_PROFILE) -> dict[str, Any]:
    """Everything of an OCR worker that shapes the pages it writes, as a JSON-able dict (the
    worker's half of the cache key; :func:`fingerprint_digest` hashes it).

    Each input and why it is there:

    - ``profile``: the model profile the worker serves (``"default"`` until profiles exist).
    - ``runtime``: the detection and recognition runtimes ``OCRSTREAM_ENGINE`` resolves to on
      this host (``resolve_runtime``: ``auto`` is OpenVINO + ONNX Runtime on an x86-64 CPU),
      or the ``OCRSTREAM_ENGINE_PLUGIN`` spec: different kernels, different numerics.
    - ``device``: the device class of ``OCRSTREAM_ENGINE_DEVICE`` (``cpu``, ``cuda``, ``gpu``;
      not its index): GPU kernels round differently.
    - ``packages``: versions of the runtime's distributions (rapidocr with its bundled
      PP-OCRv6 models, onnxruntime / onnxruntime-gpu, openvino, paddle's) and of those that
      decode and render pages (numpy, OpenCV, PyMuPDF, Pillow); absent ones as null.
    - ``models``: SHA-256 of the files under ``OCRSTREAM_MODEL_DIR`` (null: the models shipped in
      the runtime's wheel, covered by its version); ``det_int8`` and the nncf version that
      quantizes the detection model.
    - ``code``: SHA-256 of the source of the modules that turn a page task into detections
      (engine, text layer, rendering, slices, the worker's page preparation and page result):
      ocrstream's version number does not move with every change.
    - ``settings``: detection sizes and thresholds (``DET_LIMIT_SIDE_LEN``, ``DET_MIN_SIDE_LEN``,
      ``DET_BOX_THRESH``, ``DET_UNCLIP_RATIO``), recognition (``TEXT_SCORE``,
      ``REC_SPACE_THRESHOLD``, ``REC_SPACE_THRESHOLD_LETTERS``, ``USE_ANGLE_CLS``), the batch
      sizes the engine resolves (``DET_BATCH_SIZE`` / ``REC_BATCH_SIZE``, ``auto`` as the ONNX
      engine resolves it: batch shapes may change a GPU kernel's rounding), orientation
      (``PAGE_ORIENTATION``, ``ORIENTATION_MIN_CONFIDENCE``), ``TEXT_LAYER`` (pages read from
      their text layer instead of OCR), ``MAX_PAGE_PIXELS`` (a page over it fails at render
      time: a hit must not skip that check); with the ``torch`` runtime also
      ``ENGINE_PRECISION`` (fp16/bf16 round differently; the key is absent for the other
      runtimes, which run fp32 whatever it says, so their fingerprints are as before).

    Left out because they change speed or where things are, not the pages: threads, micro-batch
    waits, prefetch, time budgets, retries, slicing thresholds (a slice renders like its page),
    cache directories, Kafka and S3 settings.

    Raises:
        ValueError: ``OCRSTREAM_ENGINE`` is unknown.
    """
    from .engine.runtime import resolve_runtime  # the engine package imports numpy: only when needed

    det_runtime, rec_runtime = resolve_runtime(s)
    cuda = s.engine_device.startswith("cuda")
    runtimes = sorted({det_runtime, rec_runtime})
    packages = [*_COMMON_PACKAGES, *(p for r in runtimes for p in _RUNTIME_PACKAGES.get(r, ()))]
    if s.det_int8:
        packages.append("nncf")
    shaping: dict[str, Any] = {
        "det_limit_side_len": s.det_limit_side_len, "det_min_side_len": s.det_min_side_len,
        "det_box_thresh": s.det_box_thresh, "det_unclip_ratio": s.det_unclip_ratio,
        "text_score": s.text_score, "rec_space_threshold": s.rec_space_threshold,
        "rec_space_threshold_letters": s.rec_space_threshold_letters, "use_angle_cls": s.use_angle_cls,
        "det_batch_size": s.det_batch_size or (s.batch_max_pages if cuda else 1),
        "rec_batch_size": s.rec_batch_size or (6 if cuda else 1),
        "page_orientation": s.page_orientation, "orientation_min_confidence": s.orientation_min_confidence,
        "text_layer": s.text_layer, "max_page_pixels": s.max_page_pixels,
    }
    if "torch" in runtimes:
        shaping["engine_precision"] = s.engine_precision
    return {
        "format": CACHE_FORMAT,
        "profile": profile,
        "runtime": {"det": det_runtime, "rec": rec_runtime, "plugin": s.engine_plugin},
        "device": s.engine_device.split(":")[0],
        "packages": _versions(tuple(sorted(set(packages)))),
        "models": {"dir": _tree_digest(s.model_dir) if s.model_dir else None, "det_int8": s.det_int8},
        "code": _code_digest(),
        "settings": shaping,
    }


def fingerprint_digest(s: Settings, profile: str = DEFAULT_PROFILE) -> str:
    """:func:`canonical_digest` of :func:`output_fingerprint` (64 hex characters)."""
    return canonical_digest(output_fingerprint(s, profile))


def cache_key(request: str, fingerprint: str) -> str:
    """The cache key (64 hex characters) of a document: its :func:`request_digest` with the
    :func:`fingerprint_digest` of the workers that OCR it."""
    return canonical_digest({"format": CACHE_FORMAT, "request": request, "output": fingerprint})


def enabled(s: Settings) -> bool:
    """True when the result cache is on (``OCRSTREAM_RESULT_CACHE_TTL_H`` > 0)."""
    return s.result_cache_ttl_h > 0


# --- the environment (computed once per process) ---------------------------------------------

@lru_cache(maxsize=None)
def _versions(distributions: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in distributions:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def _code_digest() -> str:
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pattern in _OUTPUT_CODE:
        files = sorted(root.glob(pattern))
        h.update(f"{pattern}\0{len(files)}\0".encode())
        for path in files:
            h.update(f"{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _tree_digest(root: Path) -> str:
    """SHA-256 over the relative paths and contents of every file under ``root``; files are hashed
    once per process for a given size and modification time."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        h.update(f"{path.relative_to(root).as_posix()}\0".encode())
        h.update(_file_digest(str(path), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
