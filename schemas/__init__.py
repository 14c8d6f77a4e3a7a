"""Versioned message contracts: pydantic models, codec and JSON Schema files."""

from .codec import decode, encode, export_json_schemas, json_schema
from .messages import (
    SCHEMA_VERSION,
    CachedResult,
    DeadLetter,
    Detection,
    DocumentOptions,
    DocumentRef,
    DocumentResult,
    EngineInfo,
    Error,
    GpuSample,
    ObjectRef,
    Page,
    PageResult,
    PageTask,
    WorkerMetrics,
)

__all__ = [
    "SCHEMA_VERSION", "CachedResult", "DeadLetter", "Detection", "DocumentOptions", "DocumentRef", "DocumentResult",
    "EngineInfo", "Error", "GpuSample", "ObjectRef", "Page", "PageResult", "PageTask", "WorkerMetrics",
    "decode", "encode", "export_json_schemas", "json_schema",
]
