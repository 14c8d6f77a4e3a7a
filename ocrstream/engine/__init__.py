"""OCR engines behind one interface (:class:`Engine`), chosen by ``OCRSTREAM_ENGINE``."""

from __future__ import annotations

from ..settings import Settings
from .base import Engine, PageOcr, TextLine


def create_engine(s: Settings) -> Engine:
    """Build the configured engine (``onnxruntime`` | ``paddle`` | ``none``).

    Raises:
        ValueError: unknown engine name.
        ImportError: the runtime's package is not installed.
    """
    if s.engine == "onnxruntime":
        from .onnx import OnnxEngine

        return OnnxEngine(s)
    if s.engine == "paddle":
        from .paddle import PaddleEngine

        return PaddleEngine(s)
    if s.engine == "none":
        from .null import NullEngine

        return NullEngine()
    raise ValueError(f"unknown engine {s.engine!r}")


__all__ = ["Engine", "PageOcr", "TextLine", "create_engine"]
