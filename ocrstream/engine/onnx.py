"""PP-OCR from ONNX files on ONNX Runtime, OpenVINO or PyTorch, with recognition batched across the
pages of a micro-batch.

Models: PP-OCRv6 small detection and recognition as shipped inside the
``rapidocr`` 3.10 wheel (offline; no download), or ``OCRSTREAM_MODEL_DIR``
holding ``*det*.onnx`` / ``*rec*.onnx``. Pre- and post-processing (DB
detection post-processing, rotated crops) are RapidOCR's, so results match PaddleOCR's
reference pipeline; CTC decoding is PaddleOCR's best path plus spaces where the recognizer
saw a gap (:mod:`.ctc`, ``OCRSTREAM_REC_SPACE_THRESHOLD``).

Batching: detection batches pages of the same size on a GPU (``det_batch_size``; one
page per call on CPU, where batching is slower); the text-line crops
of *all* pages are then pooled and recognized ``rec_batch_size`` at a time in a
fixed width buckets (multiples of :data:`REC_WIDTH_STEP`). Each crop is padded to its
own bucket's width, never to the widest crop that happens to share its batch,
so a line's text does not depend on which pages were batched with it, and the
runtime sees a handful of input shapes (no re-tuning per width on GPUs).

GPU: with ``OCRSTREAM_ENGINE_DEVICE=cuda:N`` the CUDA execution provider is used
with ``cudnn_conv_algo_search=HEURISTIC``: cuDNN's EXHAUSTIVE search re-tunes on
every new recognition width and can make the GPU slower than the CPU.

PyTorch (``OCRSTREAM_ENGINE=torch``, CPU or ``cuda:N``): RapidOCR loads the models on ONNX Runtime
(CPU) as for the other runtimes, then each network call (det, cls, rec) is swapped for a
:class:`.torch_session.TorchSession` of the same ONNX file: everything around the network calls
stays the same code.
"""

from __future__ import annotations

import copy
from importlib import metadata
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from schemas import EngineInfo

from ..settings import Settings
from .base import PageOcr, TextLine
from .ctc import ctc_greedy_decode


REC_MIN_WIDTH = 16
"""No crop is padded to less than this many pixels. PaddleOCR pads every crop to at least 320
(``rec_image_shape`` 3x48x320); padding a short crop only to its own width reads better and
costs less (receipts, word F1 / s per page: min 320 0.875 / 2.15, min 16 0.880 / 1.71)."""
REC_WIDTH_STEP = 64
"""Recognition widths are multiples of this many pixels (at the model's 48-pixel height).
Measured on 4 scanned pages, 1 CPU thread: 64-px steps 2.5 s/page, coarse buckets
(320/480/640/960/1280/1920) 3.25 s/page: padding waste is recognition time."""


REC_STRIDE = 8
"""The recognizer's downsampling along the width (one CTC time step per 8 input pixels): a crop
recognized alone is padded to a multiple of this, no more."""


def rec_width(crop_ratio: float, height: int = 48, step: int = REC_WIDTH_STEP) -> int:
    """Padded recognition width (pixels) for a crop of aspect ratio ``crop_ratio`` (w/h): the
    crop's width at ``height`` rounded up to a multiple of ``step``, at least :data:`REC_MIN_WIDTH`."""
    need = math.ceil(height * crop_ratio)
    return max(REC_MIN_WIDTH, math.ceil(need / step) * step)


_OOM_MARKERS = ("out of memory", "failed to allocate memory", "bfcarena", "cudnn_status_alloc_failed",
                "cublas_status_alloc_failed", "std::bad_alloc")  # the last: OpenVINO's CPU plugin


def is_out_of_memory(exc: BaseException) -> bool:
    """True if an ONNX Runtime or OpenVINO error is an allocation failure (CUDA
    ``cudaErrorMemoryAllocation``, the BFC arena refusing a request, cuDNN/cuBLAS workspace
    allocation, a C++ ``std::bad_alloc``), judged from its message: both runtimes raise them as
    generic runtime errors with no dedicated type."""
    text = str(exc).lower()
    return any(m in text for m in _OOM_MARKERS)


def wheel_model(name: str) -> Path:
    """Path of a model file shipped in the ``rapidocr`` wheel (``rapidocr/models/<name>``).

    Raises:
        FileNotFoundError: the wheel has no such file (another rapidocr version).
    """
    import rapidocr

    path = Path(rapidocr.__file__).parent / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in the installed rapidocr wheel")
    return path


class OnnxEngine:
    """PP-OCR det+cls+rec from ONNX files, on ONNX Runtime or OpenVINO (see module docstring).

    Args:
        s: settings (thresholds, threads, device, precision, model directory).
        runtime: ``onnxruntime`` (CPU or CUDA), ``openvino`` (CPU) or ``torch`` (CPU or CUDA) for
            detection (and the angle classifier); only the network calls differ: image pre-processing, DB post-processing,
            crops and CTC decoding are the same RapidOCR code for both, so both read the same text.
        rec_runtime: the runtime of recognition (default: ``runtime``). ``auto`` on an x86-64 CPU
            mixes them (see :mod:`.runtime`).

    Raises:
        FileNotFoundError: ``OCRSTREAM_MODEL_DIR`` lacks ``*det*.onnx`` / ``*rec*.onnx``.
        ValueError: ``openvino`` with a device other than ``cpu``; ``torch`` with a device other
            than ``cpu`` / ``cuda:N``, or mixed with another runtime.
        RuntimeError: a CUDA device was asked for but ONNX Runtime (torch) cannot use it.
        ImportError: ``torch`` without torch, onnx, onnx2torch (``pip install 'ocrstream[torch]'``).
    """

    def __init__(self, s: Settings, runtime: str = "onnxruntime", rec_runtime: str | None = None):
        from rapidocr import EngineType, RapidOCR

        rec_runtime = rec_runtime or runtime
        use_torch = "torch" in (runtime, rec_runtime)
        if use_torch and runtime != rec_runtime:
            raise ValueError(f"the torch runtime runs all networks, not mixed with {runtime}+{rec_runtime}")
        if use_torch:
            from .torch_session import check_device

            check_device(s.engine_device)  # before any model is loaded: a clear error, no CPU fallback
        # CPU: one crop per call, padded only to its own width (a multiple of 8 pixels), measured
        # faster than batches of same-bucket crops; GPU: batches keep it busy.
        rec_batch = s.rec_batch_size or (6 if s.engine_device.startswith("cuda") else 1)
        # rapidocr 3.10's defaults are PP-OCRv6 small det/rec (ONNX, inside the wheel).
        params: dict = {
            "Global.log_level": "warning",
            "Global.max_side_len": s.det_limit_side_len,
            "Det.limit_side_len": s.det_min_side_len,
            "Det.box_thresh": s.det_box_thresh,
            "Det.unclip_ratio": s.det_unclip_ratio,
            "Global.text_score": s.text_score,
            "Global.use_cls": s.use_angle_cls,
            "Rec.rec_batch_num": rec_batch,
            "Cls.cls_batch_num": max(6, rec_batch),
        }
        device = s.engine_device
        parts = {"Det": runtime, "Cls": runtime, "Rec": rec_runtime}
        models = {"Det": "PP-OCRv6_det_small.onnx", "Cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
                  "Rec": "PP-OCRv6_rec_small.onnx"}
        for part, part_runtime in parts.items():
            if part_runtime == "openvino":
                if device != "cpu":
                    raise ValueError(f"OCRSTREAM_ENGINE=openvino runs on the CPU, not {device} (use onnxruntime)")
                params[f"{part}.engine_type"] = EngineType.OPENVINO
                # OpenVINO reads the ONNX files as they are; RapidOCR would otherwise look up (and
                # download) OpenVINO IR files for the default models.
                params[f"{part}.model_path"] = str(wheel_model(models[part]))
        # OpenVINO pins its threads to cores by default, and two worker processes on one host pin
        # to the *same* cores (measured: 2 processes x 1 thread, detection 2.6 s/page each instead
        # of 1.35 s alone); the OS scheduler spreads them when pinning is off (1.5-1.6 s each).
        params["EngineConfig.openvino.enable_cpu_pinning"] = False
        if s.engine_threads > 0:
            params["EngineConfig.openvino.inference_num_threads"] = s.engine_threads
            params["EngineConfig.onnxruntime.intra_op_num_threads"] = s.engine_threads
        # torch: ONNX Runtime only loads the models (on the CPU); the networks run on torch below.
        ort_cuda = device.startswith("cuda") and not use_torch
        if ort_cuda:
            import onnxruntime as ort

            # CUDA/cuDNN installed as pip wheels (nvidia-*-cu12/13) are not on the loader's
            # path; ORT >= 1.21 loads them from site-packages (a no-op where they are system libs).
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()
            idx = int(device.split(":")[1]) if ":" in device else 0
            params.update({
                "EngineConfig.onnxruntime.use_cuda": True,
                "EngineConfig.onnxruntime.cuda_ep_cfg.device_id": idx,
                "EngineConfig.onnxruntime.cuda_ep_cfg.cudnn_conv_algo_search": "HEURISTIC",
            })
        if s.model_dir:
            det = sorted(Path(s.model_dir).glob("*det*.onnx"))
            rec = sorted(Path(s.model_dir).glob("*rec*.onnx"))
            if not det or not rec:
                raise FileNotFoundError(f"{s.model_dir} needs *det*.onnx and *rec*.onnx files")
            params["Det.model_path"] = str(det[0])
            params["Rec.model_path"] = str(rec[0])
            keys = sorted(Path(s.model_dir).glob("*dict*.txt"))
            if keys:  # recognizers without the character list in their metadata ship it beside them
                params["Rec.rec_keys_path"] = str(keys[0])
        self._ocr = RapidOCR(params=params)
        self._det = self._ocr._load_det_model()
        if s.det_int8:
            if runtime != "openvino":
                raise ValueError("OCRSTREAM_DET_INT8 needs OCRSTREAM_ENGINE=openvino (or auto on an x86-64 CPU)")
            from .quantize import int8_detection_model

            params["Det.model_path"] = str(int8_detection_model(
                Path(params["Det.model_path"]), s.model_cache_dir or Path.home() / ".cache" / "ocrstream" / "models",
                lambda page: self._det_input(page)[2]))
            self._ocr = RapidOCR(params=params)
            self._det = self._ocr._load_det_model()
        self._cls = self._ocr._load_cls_model() if s.use_angle_cls else None
        self._rec = self._ocr._load_rec_model()
        version_extra = ""
        if use_torch:
            from .torch_session import TorchSession, describe

            if s.engine_threads > 0:
                import torch

                torch.set_num_threads(s.engine_threads)
            for part, stage in (("Det", self._det), ("Cls", self._cls), ("Rec", self._rec)):
                if stage is not None:
                    path = params.get(f"{part}.model_path") or wheel_model(models[part])
                    stage.session = TorchSession(path, device, s.engine_precision)
            version_extra = " " + describe(s.engine_precision)
        if ort_cuda:
            # RapidOCR falls back to the CPU with only a log line when the CUDA provider cannot
            # load; a GPU worker silently running on the CPU is worse than one that refuses to start.
            used = self._det.session.session.get_providers()
            if used[0] != "CUDAExecutionProvider":
                raise RuntimeError(f"OCRSTREAM_ENGINE_DEVICE={device} but ONNX Runtime runs on {used} "
                                   "(install onnxruntime-gpu and CUDA 12/13 + cuDNN 9)")
        self.text_score = s.text_score
        self.space_threshold = s.rec_space_threshold
        self.letters_space_threshold = s.rec_space_threshold_letters
        self._characters = self._rec.postprocess_op.character
        self.rec_batch_size = rec_batch
        # On CPU a batch of same-size pages is slower per page than one page at a time (5 scanned
        # Letter pages at 150 DPI: 1827 vs ~700-1185 ms/page, 2 cores): the activations outgrow
        # the caches. On a GPU one call for many pages is what keeps it busy.
        self.det_batch_size = s.det_batch_size or (s.batch_max_pages if device.startswith("cuda") else 1)
        det_name = Path(params.get("Det.model_path", "PP-OCRv6_det_small.onnx")).stem.replace(".int8-", "-int8-")
        rec_name = Path(params.get("Rec.model_path", "PP-OCRv6_rec_small.onnx")).stem
        version = f"rapidocr-{metadata.version('rapidocr')}{version_extra}"
        if "openvino" in parts.values():
            version += f" openvino-{metadata.version('openvino')}"
        name = runtime if rec_runtime == runtime else f"{runtime}+{rec_runtime}"  # detection+recognition
        self.info = EngineInfo(name=name, det_model=det_name, rec_model=rec_name, device=device, version=version)

    def _det_input(self, image: np.ndarray) -> tuple[np.ndarray, dict, np.ndarray | None]:
        """RapidOCR's detection pre-processing of one page (``HxWx3 uint8 BGR``): ``(resized
        image, op_record to map boxes back, 1x3xHxW float32 network input with H and W multiples
        of 32, or None)``."""
        from rapidocr.utils.process_img import apply_vertical_padding

        ocr = self._ocr
        img, op_record = ocr.preprocess_img(image)
        img, op_record = apply_vertical_padding(img, op_record, ocr.width_height_ratio, ocr.min_height)
        return img, op_record, self._det.get_preprocess()(img)

    def _detect(self, images: list[np.ndarray]) -> tuple[list[tuple], list[float]]:
        """Text detection; pages whose detection inputs have the same shape (e.g. pages of
        one size at one DPI) go through the network as one batch.

        Returns ``([(detection image, op_record, boxes or None)], [det ms per page])``,
        boxes in reading order and in pixels of the detection image.
        """
        det = self._det
        prepared, inputs = [], []
        for image in images:
            img, op_record, x = self._det_input(image)
            prepared.append([img, op_record, None])
            inputs.append(x)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, x in enumerate(inputs):
            if x is not None:
                groups[x.shape].append(i)
        per_page_ms = [0.0] * len(images)
        for members in groups.values():
            for start in range(0, len(members), self.det_batch_size):
                chunk = members[start:start + self.det_batch_size]
                t = time.perf_counter()
                preds = det.session(np.concatenate([inputs[i] for i in chunk]))
                for j, i in enumerate(chunk):
                    boxes, _ = det.postprocess_op(preds[j:j + 1], prepared[i][0].shape[:2])
                    prepared[i][2] = det.sorted_boxes(boxes) if len(boxes) else None
                share = (time.perf_counter() - t) * 1000 / len(chunk)
                for i in chunk:
                    per_page_ms[i] = round(share, 1)
        return [tuple(p) for p in prepared], per_page_ms

    def _recognize(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Recognize text-line crops (``hxwx3 uint8 BGR``), bucketed by padded width.

        Returns ``(text, confidence)`` per crop, in input order.
        """
        rec = self._rec
        height = rec.rec_image_shape[1]
        ratios = [c.shape[1] / max(1, c.shape[0]) for c in crops]
        groups: dict[int, list[int]] = defaultdict(list)
        step = REC_STRIDE if self.rec_batch_size == 1 else REC_WIDTH_STEP
        for i, ratio in enumerate(ratios):
            groups[rec_width(ratio, height, step)].append(i)
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for width, members in sorted(groups.items()):
            max_ratio = width / height
            for start in range(0, len(members), self.rec_batch_size):
                chunk = members[start:start + self.rec_batch_size]
                batch = np.stack([rec.resize_norm_img(crops[i], max_ratio) for i in chunk]).astype(np.float32)
                probs = rec.session(batch)
                for i, line_probs in zip(chunk, probs):
                    out[i] = ctc_greedy_decode(line_probs, self._characters, self.space_threshold,
                                               self.letters_space_threshold)
        return out

    def ocr_batch(self, images: list[np.ndarray]) -> list[PageOcr]:
        """OCR pages (``HxWx3 uint8 BGR``): same-size pages detected as one batch, recognition
        pooled across all of them.

        Returns one :class:`PageOcr` per image; polygons are in pixels of that image.

        Raises:
            MemoryError: ONNX Runtime could not allocate device (or host) memory for the batch;
                the worker halves the batch and retries.
        """
        try:
            return self._ocr_batch(images)
        except MemoryError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc):
                raise MemoryError(str(exc)[:500]) from exc
            raise

    def _ocr_batch(self, images: list[np.ndarray]) -> list[PageOcr]:
        from rapidocr.utils.process_img import get_rotate_crop_image, map_boxes_to_original

        pages: list[tuple[np.ndarray | None, list[np.ndarray], float]] = []
        crops: list[np.ndarray] = []
        for image, (img, op_record, boxes), page_det_ms in zip(images, *self._detect(images)):
            if boxes is None or len(boxes) == 0:
                pages.append((None, [], page_det_ms))
                continue
            page_crops = [get_rotate_crop_image(img, copy.deepcopy(box)) for box in boxes]
            boxes = map_boxes_to_original(boxes.astype(np.float32), op_record, *image.shape[:2])
            crops.extend(page_crops)
            pages.append((boxes, page_crops, page_det_ms))

        t1 = time.perf_counter()
        texts: list[tuple[str, float]] = []
        if crops:
            if self._cls is not None:
                crops = self._cls(crops).img_list
            texts = self._recognize(crops)
        rec_ms = (time.perf_counter() - t1) * 1000

        # Hand the pooled recognition results back to their pages.
        total_crops = max(1, len(crops))
        out: list[PageOcr] = []
        cursor = 0
        for boxes, page_crops, page_det_ms in pages:
            lines: list[TextLine] = []
            n = len(page_crops)
            for box, (text, score) in zip(boxes if boxes is not None else [], texts[cursor:cursor + n]):
                if text.strip() and score >= self.text_score:
                    lines.append(TextLine(text=text, polygon=[[round(float(x), 1), round(float(y), 1)] for x, y in box],
                                          confidence=round(float(score), 4)))
            cursor += n
            out.append(PageOcr(lines=lines, timings_ms={
                "det_ms": round(page_det_ms, 1),
                # Pooled recognition time, shared out by the page's share of crops.
                "rec_ms": round(rec_ms * n / total_crops, 1),
            }))
        return out
