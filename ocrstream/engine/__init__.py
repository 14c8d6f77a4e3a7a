"""OCR engines behind one interface (:class:`Engine`), chosen by ``OCRSTREAM_ENGINE``."""

from __future__ import annotations

from ..settings import Settings
from .base import Engine, PageOcr, TextLine
from .runtime import resolve_runtime


def create_engine(s: Settings) -> Engine:
    """Build the configured engine (``auto`` | ``openvino`` | ``onnxruntime`` | ``torch`` |
    ``paddle`` | ``none``, see :func:`resolve_runtime`), or the one ``OCRSTREAM_ENGINE_PLUGIN``
    (``module:factory``, called with the settings) names. The PP-OCR runtimes read turned pages
    upright (:class:`.orientation.OrientingEngine`) unless ``OCRSTREAM_PAGE_ORIENTATION=off``;
    a plugin is used as it is.

    Raises:
        ValueError: unknown engine name, or a plugin spec without ``:``.
        ImportError: the runtime's package (or the plugin's module) is not installed (``torch``:
            the ``torch`` extra).
        RuntimeError: a CUDA device was asked for and the runtime cannot use it.
    """
    if s.engine_plugin:
        import importlib

        module, sep, attr = s.engine_plugin.partition(":")
        if not sep:
            raise ValueError(f"OCRSTREAM_ENGINE_PLUGIN must be module:factory, got {s.engine_plugin!r}")
        return getattr(importlib.import_module(module), attr)(s)
    runtime, rec_runtime = resolve_runtime(s)
    if runtime in ("onnxruntime", "openvino", "torch", "paddle"):
        if runtime == "paddle":
            from .paddle import PaddleEngine

            engine: Engine = PaddleEngine(s)
        else:
            from .onnx import OnnxEngine

            engine = OnnxEngine(s, runtime, rec_runtime)
        if s.page_orientation == "auto":
            from .orientation import OrientingEngine

            engine = OrientingEngine(engine, s.orientation_min_confidence)
        return engine
    if runtime == "none":
        from .null import NullEngine

        return NullEngine()
    raise ValueError(f"unknown engine {s.engine!r}")


__all__ = ["Engine", "PageOcr", "TextLine", "create_engine", "resolve_runtime"]
