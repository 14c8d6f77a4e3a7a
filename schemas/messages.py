"""Message contracts (schema version 1).

Each message is a JSON object with ``schema`` (its name) and ``schema_version``.
The JSON Schema files in ``schemas/json/`` are generated from these models
(``ocrstream schemas export``) and a test keeps them in step, so downstream
consumers in any language can validate what they read.

Coordinates: every ``polygon`` is 4 ``[x, y]`` points in pixels of the image
that was OCR'd (``width`` x ``height``), top-left origin, clockwise from the
top-left corner. Times are milliseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Point = Annotated[list[float], Field(min_length=2, max_length=2)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ObjectRef(_Message):
    """Where a document lives in object storage."""

    bucket: str = Field(min_length=3, max_length=63)
    key: str = Field(min_length=1, max_length=1024)
    filename: str = Field(min_length=1, max_length=1024, description="original file name")
    etag: str | None = None
    version_id: str | None = None
    size: int | None = Field(None, ge=0, description="bytes")
    content_type: str | None = None


class Error(_Message):
    """Why something failed: ``code`` is a stable reason code (see ocrstream.errors)."""

    code: str
    message: str


class DocumentOptions(_Message):
    """Per-document overrides of worker settings."""

    dpi: int | None = Field(None, ge=36, le=600, description="PDF render DPI")


class DocumentRef(_Message):
    """Ingest topic value: a document in object storage to OCR. Key: ``document_id``."""

    schema_: Literal["document_ref"] = Field("document_ref", alias="schema")
    schema_version: Literal[1] = 1
    document_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:\-]+$")
    source: ObjectRef
    submitted_at: int = Field(description="ms since epoch")
    options: DocumentOptions = Field(default_factory=DocumentOptions)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PageTask(_Message):
    """Pages topic value: one page of a document to OCR. Key: ``document_id/page_number``."""

    schema_: Literal["page_task"] = Field("page_task", alias="schema")
    schema_version: Literal[1] = 1
    document_id: str
    source: ObjectRef
    page_number: int = Field(ge=1, description="1-based")
    page_count: int = Field(ge=1)
    kind: Literal["pdf", "image"]
    dpi: int | None = Field(None, description="render DPI for PDFs; null for images")
    submitted_at: int

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Detection(_Message):
    """One recognized text line."""

    text: str
    polygon: Annotated[list[Point], Field(min_length=4, max_length=4)]
    confidence: float = Field(ge=0.0, le=1.0)


class EngineInfo(_Message):
    """Which engine and models produced a result."""

    name: str = Field(description="onnxruntime | paddle | none")
    det_model: str | None = None
    rec_model: str | None = None
    device: str = "cpu"
    version: str | None = None


class Page(_Message):
    """OCR output for one page."""

    page_number: int = Field(ge=1)
    status: Literal["succeeded", "failed"] = "succeeded"
    error: Error | None = None
    width: int = Field(ge=0, description="pixels of the OCR'd image")
    height: int = Field(ge=0, description="pixels of the OCR'd image")
    dpi: int | None = Field(None, description="render DPI; null for images")
    detections: list[Detection] = Field(default_factory=list, description="reading order")
    timings_ms: dict[str, float] = Field(default_factory=dict)


class PageResult(Page):
    """Page-results topic value. Key: ``document_id``."""

    schema_: Literal["page_result"] = Field("page_result", alias="schema")
    schema_version: Literal[1] = 1
    document_id: str
    source: ObjectRef
    page_count: int = Field(ge=1)
    engine: EngineInfo
    worker_id: str
    submitted_at: int
    completed_at: int

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DocumentResult(_Message):
    """Document-results topic value (compacted). Key: ``document_id``."""

    schema_: Literal["document_result"] = Field("document_result", alias="schema")
    schema_version: Literal[1] = 1
    document_id: str
    source: ObjectRef | None
    status: Literal["succeeded", "failed"]
    error: Error | None = None
    page_count: int = Field(ge=0)
    pages: list[Page] = Field(default_factory=list, description="ordered by page_number")
    engine: EngineInfo | None = None
    timings_ms: dict[str, float] = Field(
        default_factory=dict, description="summed per-stage times and end-to-end latency"
    )
    submitted_at: int | None = None
    completed_at: int

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def text(self) -> str:
        """All recognized text, pages separated by a form feed, lines by newlines."""
        return "\f".join("\n".join(d.text for d in p.detections) for p in self.pages)


class DeadLetter(_Message):
    """Dead-letter topic value: a message a stage could not process. Key: original key."""

    schema_: Literal["dead_letter"] = Field("dead_letter", alias="schema")
    schema_version: Literal[1] = 1
    topic: str
    partition: int
    offset: int
    key: str | None
    reason: str = Field(description="reason code")
    error_class: str
    message: str
    attempts: int = 1
    stage: str
    document_id: str | None = None
    value: str | None = Field(None, description="the original value as text, truncated")
    value_truncated: bool = False
    failed_at: int

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class GpuSample(_Message):
    """One accelerator as seen through NVML."""

    index: int
    uuid: str
    name: str
    utilization_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None
    process_memory_bytes: int | None = None


class WorkerMetrics(_Message):
    """Metrics topic value: a worker's figures since its last sample. Key: ``worker_id``."""

    schema_: Literal["worker_metrics"] = Field("worker_metrics", alias="schema")
    schema_version: Literal[1] = 1
    host: str
    worker_id: str
    stage: str
    at: int
    interval_s: float
    gpus: list[GpuSample] | None = Field(None, description="null when NVML/NVIDIA GPUs are absent")
    cpu_pct: float
    rss_bytes: int
    pages: int
    batches: int
    mean_batch_size: float
    pages_per_s: float
    batch_latency_ms_p50: float | None
    batch_latency_ms_p95: float | None
    errors: dict[str, int] = Field(default_factory=dict, description="by reason code")
    lag: dict[str, int] = Field(default_factory=dict, description="'topic/partition' -> messages")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


ALL_MESSAGES: dict[str, type[_Message]] = {
    "document_ref": DocumentRef,
    "page_task": PageTask,
    "page_result": PageResult,
    "document_result": DocumentResult,
    "dead_letter": DeadLetter,
    "worker_metrics": WorkerMetrics,
}
