"""Which inference runtime runs the PP-OCR models (``OCRSTREAM_ENGINE``).

``auto`` on an x86-64 CPU runs detection on OpenVINO and recognition on ONNX Runtime, and both
on ONNX Runtime elsewhere (CUDA devices, ARM hosts). Both runtimes run the very same ONNX files
with the very same pre- and post-processing (:class:`ocrstream.engine.onnx.OnnxEngine`), so they
read the same text. Why the mix (2 EPYC cores, 8 scanned court-filing pages, 34 lines a page,
ms per page): detection OpenVINO 645 / ONNX Runtime 1028; recognition OpenVINO 2185-2337 / ONNX
Runtime 1852-1898 (OpenVINO re-prepares its kernels for each new input width, and recognition
sees many widths). README, "Performance and accuracy".
"""

from __future__ import annotations

import importlib.util
import platform

from ..settings import Settings

_X86_64 = {"x86_64", "amd64", "x64"}


def resolve_runtime(s: Settings) -> tuple[str, str]:
    """The runtimes ``OCRSTREAM_ENGINE`` stands for, ``(detection, recognition)``: each one of
    ``openvino``, ``onnxruntime``, ``torch``, ``paddle``, ``none``. ``auto``: ``(openvino, onnxruntime)`` when
    the device is the CPU, the host is x86-64 and the ``openvino`` package is installed; else
    ``(onnxruntime, onnxruntime)``. Any other value: that runtime for both."""
    if s.engine != "auto":
        return s.engine, s.engine
    on_cpu = s.engine_device == "cpu"
    if on_cpu and platform.machine().lower() in _X86_64 and importlib.util.find_spec("openvino") is not None:
        return "openvino", "onnxruntime"
    return "onnxruntime", "onnxruntime"
