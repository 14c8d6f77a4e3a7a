"""Message contracts (schema version 1).

Each message is a JSON object with ``schema`` (its name) and ``schema_version``
(the integer *major* version). The JSON Schema files in ``schemas/json/`` are
generated from these models (``ocrstream schemas export``) and a test keeps them
in step, so downstream consumers in any language can validate what they read.

Evolution (see ``schemas/README.md``): adding an optional field is a compatible
change and keeps ``schema_version``. Readers are tolerant, writers are strict:

- reading (``schemas.decode``, which validates with :data:`TOLERANT_CONTEXT`)
  accepts unknown fields at any nesting level, validates the known ones and
  keeps the unknown ones on the model (``model_extra``), so ``encode`` re-emits
  them and an object passed through into a new message (e.g. ``ref.source``
  into a ``PageTask``) carries them along;
- writing (constructing a model in code, or ``model_validate`` without that
  context) refuses unknown fields with a ``ValidationError`` (``extra_forbidden``),
  and assigning an unknown attribute raises ``ValueError``.

Coordinates: every ``polygon`` is 4 ``[x, y]`` points in pixels of the image
that was OCR'd (``width`` x ``height``), top-left origin, clockwise from the
top-left corner. Times are milliseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

SCHEMA_VERSION = 1

Point = Annotated[list[float], Field(min_length=2, max_length=2)]


TOLERATE_UNKNOWN_FIELDS = "tolerate_unknown_fields"
"""Validation-context key: when true, unknown fields are kept instead of refused."""

TOLERANT_CONTEXT: dict[str, Any] = {TOLERATE_UNKNOWN_FIELDS: True}
"""The context ``decode`` validates with: ``Model.model_validate(obj, context=TOLERANT_CONTEXT)``."""


class _Message(BaseModel):
    """Base of every contract model: tolerant when reading, strict when writing.

    ``extra="allow"`` makes pydantic keep unknown fields (``model_extra``), emit
    them again on ``model_dump``/``encode`` and mark the JSON Schema
    ``additionalProperties: true`` (the consumers' view). The wrap validator
    below takes that tolerance back for every validation of raw input (a dict
    of keyword arguments or a JSON object) whose context does not carry
    :data:`TOLERATE_UNKNOWN_FIELDS`, so code that builds messages stays strict.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)

    @model_validator(mode="wrap")
    @classmethod
    def _refuse_unknown_fields_unless_tolerant(
        cls, data: Any, handler: ModelWrapValidatorHandler[Any], info: ValidationInfo
    ) -> Any:
        """Validate, then refuse fields the model does not declare unless reading tolerantly.

        A model instance given as a field value (e.g. a decoded ``ObjectRef``
        passed to ``PageTask(source=...)``) is not raw input: it is kept as is,
        unknown fields included (pass-through).

        Raises:
            PydanticCustomError: ``extra_forbidden`` (reported in the
                ``ValidationError``) when raw input has fields the model does not
                declare and the validation context does not tolerate them.
        """
        model = handler(data)
        if isinstance(data, BaseModel) or (info.context or {}).get(TOLERATE_UNKNOWN_FIELDS):
            return model
        extra = getattr(model, "__pydantic_extra__", None)
        if extra:
            raise PydanticCustomError(
                "extra_forbidden", "Extra inputs are not permitted: {fields}",
                {"fields": ", ".join(sorted(extra))},
            )
        return model

    def __setattr__(self, name: str, value: Any) -> None:
        """Set a declared field (or an unknown field the message was decoded with).

        Raises:
            ValueError: ``name`` is neither a field of the model nor one of its
                decoded unknown fields (a typo in producer code).
        """
        if (not name.startswith("_") and name not in type(self).model_fields
                and name not in (self.__pydantic_extra__ or {})
                and not isinstance(getattr(type(self), name, None), property)):
            raise ValueError(f'"{type(self).__name__}" object has no field "{name}"')
        super().__setattr__(name, value)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied (not validated); decoded unknown fields are kept.

        Raises:
            ValueError: an ``update`` key is neither a field name of the model
                nor one of its decoded unknown fields (a typo in producer code).
        """
        extra = self.__pydantic_extra__ or {}
        unknown = sorted(k for k in update or {} if k not in type(self).model_fields and k not in extra)
        if unknown:
            raise ValueError(f'"{type(self).__name__}" object has no field(s) {", ".join(unknown)}')
        return super().model_copy(update=update, deep=deep)


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
    # Not constrained here: a malformed value is the splitter's `invalid_page_range` (a failed
    # result naming what is wrong), not a bare `schema_violation`. Written only when set.
    pages: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="pages to OCR, 1-based inclusive comma-separated ranges, e.g. \"1-3,7\" (ocrstream.page_ranges); "
                    "pages beyond the document's, reversed (3-1), overlapping or empty ranges fail the document "
                    "with `invalid_page_range`; absent = every page. A splitter that predates the field OCRs "
                    "every page")
    # Requests, not grants: the splitter checks both against the tenant's configuration.
    profile: str | None = Field(
        None, exclude_if=lambda v: v is None, max_length=63,
        description="model profile to OCR with (OCRSTREAM_PROFILES; the tenant must be allowed it, else the document "
                    "fails with `profile_not_allowed`); absent = the tenant's default (or its A/B split)")
    priority: Literal["interactive", "batch"] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="priority lane: `interactive` pages go to their own topic, which workers drain first (the tenant "
                    "must be allowed the lane, else `lane_not_allowed`); absent = `batch`")
    no_cache: bool | None = Field(
        None, exclude_if=lambda v: not v,
        description="true: OCR the document even when the result cache holds a result for the same bytes and "
                    "configuration (the fresh result then replaces the cached one, like HTTP's `no-cache`); "
                    "absent = use the cache")
    # Not constrained here either: a URL outside the tenant's allowed hosts, or a malformed one, is the
    # splitter's `webhook_not_allowed` / `invalid_webhook_url` (a failed result), not a schema violation.
    webhook_url: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="completion callback: the `ocrstream webhooks` stage POSTs a signed summary of the document "
                    "result here once (ocrstream.webhooks); must name a host of the tenant's "
                    "OCRSTREAM_WEBHOOK_ALLOWED_HOSTS, https unless that entry allows http, else the document fails "
                    "with `webhook_not_allowed` (`invalid_webhook_url` when malformed) before it is read; "
                    "absent = no callback")


PLACEMENT_DOC = ("partitions of the pages topic that hold this document's page tasks: page n is on "
                 "placement[(n - 1) % len(placement)] (set by the splitter; absent in older records: "
                 "topology.page_partition)")


PROFILE_DOC = ("the model profile the page was routed to (set by the splitter, topology.pages); absent = `default`")

SHADOW_DOC = ("true on the shadow copy of a document (topology.shadow): the same pages OCR'd by a second profile "
              "for comparison; its pipeline key is the document key + `~shadow`, its result goes to shadow-results "
              "only; absent = the document itself")

LANE_DOC = ("the priority lane the page was routed to (set by the splitter, topology.pages); absent = `batch`")

WEBHOOK_DOC = ("the document's completion callback (DocumentRef.webhook_url, checked by the splitter against "
               "the tenant's allowed hosts and again by the webhooks stage); absent = none")


PAGE_RANGE_DOC = ("the pages of the document that were requested, canonical ranges (\"1-3,7\", "
                  "from DocumentRef.pages, set by the splitter); `page_count` is then the number of those pages "
                  "and page numbers stay the document's; absent = every page 1..page_count")


class PageTask(_Message):
    """Pages topic value: one page of a document to OCR. Key: ``<document key>/page_number``
    (document key: ``document_id``, or ``<tenant>/<document_id>``, see ``topology.tenants``)."""

    schema_: Literal["page_task"] = Field("page_task", alias="schema")
    schema_version: Literal[1] = 1
    document_id: str
    source: ObjectRef
    page_number: int = Field(ge=1, description="1-based")
    page_count: int = Field(ge=1)
    kind: Literal["pdf", "image"]
    dpi: int | None = Field(None, description="render DPI for PDFs; null for images")
    submitted_at: int
    # written only for a tenant's document: the default tenant's records stay as they were
    tenant: str | None = Field(None, exclude_if=lambda v: v is None,
                               description="the tenant whose ingest topic the document came from (set by the "
                                           "splitter, never by a publisher); absent = the default tenant")
    slice: ObjectRef | None = Field(None, exclude_if=lambda v: v is None,
                                    description="a one-page PDF of this page written by the splitter for a large "
                                                "document: render its page 1 instead of downloading source")
    placement: list[Annotated[int, Field(ge=0)]] | None = Field(None, exclude_if=lambda v: v is None, min_length=1,
                                        description=PLACEMENT_DOC)
    page_range: str | None = Field(None, exclude_if=lambda v: v is None, description=PAGE_RANGE_DOC)
    profile: str | None = Field(None, exclude_if=lambda v: v is None, description=PROFILE_DOC)
    lane: Literal["interactive", "batch"] | None = Field(None, exclude_if=lambda v: v is None, description=LANE_DOC)
    cache_request: str | None = Field(
        None, exclude_if=lambda v: v is None, pattern=r"^[0-9a-f]{64}$",
        description="the splitter's half of the result-cache key (SHA-256 over tenant, content hash, DPI and "
                    "pages, ocrstream/result_cache.py); the worker adds its own output fingerprint to make "
                    "PageResult.cache_key; absent = the result is not cached")
    webhook_url: str | None = Field(None, exclude_if=lambda v: v is None, description=WEBHOOK_DOC)
    shadow: bool | None = Field(None, exclude_if=lambda v: not v, description=SHADOW_DOC)


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
    # written only for a page read from its text layer: OCR'd pages' records stay as they were
    text_source: Literal["ocr", "text_layer"] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="`text_layer`: the detections are the PDF page's own text lines (OCRSTREAM_TEXT_LAYER; "
                    "confidence 1.0, polygons in pixels at `dpi`), no OCR ran; absent = OCR")
    # written only for a turned page: upright pages' records stay as they were
    rotation: Literal[90, 180, 270] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="degrees the image was turned clockwise to be read (a page scanned sideways or upside down); "
                    "polygons stay in pixels of the image as stored, each clockwise from the text's own top-left "
                    "corner, and detections are in the upright page's reading order; absent = read as stored")


class PageResult(Page):
    """Page-results topic value. Key: the document key (``document_id``, or
    ``<tenant>/<document_id>``, see ``topology.tenants``)."""

    schema_: Literal["page_result"] = Field("page_result", alias="schema")
    schema_version: Literal[1] = 1
    document_id: str
    source: ObjectRef
    page_count: int = Field(ge=1)
    engine: EngineInfo
    worker_id: str
    submitted_at: int
    completed_at: int
    placement: list[Annotated[int, Field(ge=0)]] | None = Field(None, exclude_if=lambda v: v is None, min_length=1,
                                        description=PLACEMENT_DOC + "; copied from the page task")
    page_range: str | None = Field(None, exclude_if=lambda v: v is None,
                                   description=PAGE_RANGE_DOC + "; copied from the page task")
    profile: str | None = Field(None, exclude_if=lambda v: v is None,
                                description=PROFILE_DOC + "; copied from the page task")
    lane: Literal["interactive", "batch"] | None = Field(None, exclude_if=lambda v: v is None,
                                                         description=LANE_DOC + "; copied from the page task")
    shadow: bool | None = Field(None, exclude_if=lambda v: not v,
                                description=SHADOW_DOC + "; copied from the page task")
    # written only for a tenant's document: the default tenant's records stay as they were
    tenant: str | None = Field(None, exclude_if=lambda v: v is None,
                               description="the tenant whose ingest topic the document came from (set by the "
                                           "splitter, never by a publisher); absent = the default tenant")
    cache_key: str | None = Field(
        None, exclude_if=lambda v: v is None, pattern=r"^[0-9a-f]{64}$",
        description="result-cache key of this page's document: the task's cache_request with this worker's output "
                    "fingerprint (ocrstream/result_cache.py); the assembler caches a succeeded document whose pages "
                    "all carry the same one; absent = not cached")
    webhook_url: str | None = Field(None, exclude_if=lambda v: v is None,
                                    description=WEBHOOK_DOC + "; copied from the page task")


CACHE_KEY_DOC = "the result-cache key this result was stored under or served from (ocrstream/result_cache.py)"


class DocumentResult(_Message):
    """Document-results topic value (compacted). Key: ``document_id``.

    ``page_count`` is the number of pages the result covers: every page of the document, or,
    when the reference asked for some (``DocumentRef.pages``, echoed as ``page_range``), the
    number of those pages, so ``len(pages) == page_count`` holds for every complete result and a
    result of "1-3,7" lists pages 1, 2, 3 and 7 with their own page numbers. 0: the document
    was refused before any page (e.g. ``invalid_page_range``)."""

    schema_: Literal["document_result"] = Field("document_result", alias="schema")
    schema_version: Literal[1] = 1
    document_id: str
    source: ObjectRef | None
    status: Literal["succeeded", "failed"]
    error: Error | None = None
    page_count: int = Field(ge=0, description="pages the result covers (the requested ones when `page_range` is set)")
    pages: list[Page] = Field(default_factory=list, description="ordered by page_number")
    page_range: str | None = Field(None, exclude_if=lambda v: v is None,
                                   description="the pages requested (DocumentRef.pages, canonical: \"1-3,7\"); "
                                               "absent = every page of the document")
    engine: EngineInfo | None = None
    profile: str | None = Field(None, exclude_if=lambda v: v is None,
                                description="the model profile that OCR'd the document (topology.pages); "
                                            "absent = `default`")
    shadow: bool | None = Field(None, exclude_if=lambda v: not v,
                                description="true on a shadow copy's result (topic shadow-results, never a "
                                            "document-results topic; topology.shadow); absent = the document's own")
    timings_ms: dict[str, float] = Field(
        default_factory=dict, description="summed per-stage times and end-to-end latency"
    )
    submitted_at: int | None = None
    completed_at: int
    # written only when the result cache was involved: other results stay as they were
    cache_hit: bool | None = Field(
        None, exclude_if=lambda v: v is None,
        description="true: the pages were copied from the result cache (same bytes, tenant and configuration as "
                    "`cached_from`), no OCR ran; absent = OCR'd")
    cached_from: str | None = Field(None, exclude_if=lambda v: v is None,
                                    description="on a cache hit: the document_id whose OCR produced these pages")
    cache_key: str | None = Field(None, exclude_if=lambda v: v is None, pattern=r"^[0-9a-f]{64}$",
                                  description=CACHE_KEY_DOC + "; `ocrstream delete` removes that entry too")
    webhook_url: str | None = Field(None, exclude_if=lambda v: v is None,
                                    description=WEBHOOK_DOC + "; the webhooks stage calls it with this result's "
                                                "summary")

    def text(self) -> str:
        """All recognized text, pages separated by a form feed, lines by newlines."""
        return "\f".join("\n".join(d.text for d in p.detections) for p in self.pages)


class CachedResult(_Message):
    """Result-cache topic value (compacted, TTL): a succeeded document's result, written by the
    assembler. Key: ``cache_key``. The splitter serves it to a later document of the same tenant
    with the same key (ocrstream/result_cache.py)."""

    schema_: Literal["cached_result"] = Field("cached_result", alias="schema")
    schema_version: Literal[1] = 1
    cache_key: str = Field(pattern=r"^[0-9a-f]{64}$", description="the record key")
    tenant: str | None = Field(None, exclude_if=lambda v: v is None,
                               description="the tenant of the document that was OCR'd; absent = the default tenant")
    written_at: int = Field(description="ms since epoch: when the assembler completed the document")
    result: DocumentResult = Field(description="the document's result (status succeeded)")


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
    # written by workers that know it: older samples stay as they were
    output_fingerprint: str | None = Field(
        None, exclude_if=lambda v: v is None, pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of everything of this worker that shapes the pages it writes (engine, models, package "
                    "versions, engine settings; ocrstream/result_cache.py): the splitter serves result-cache hits "
                    "only for the one fingerprint every live worker reports")
    profile: str | None = Field(None, exclude_if=lambda v: v is None,
                                description="the model profile the worker serves (OCRSTREAM_PROFILE); absent in "
                                            "samples of older workers = `default`")


ALL_MESSAGES: dict[str, type[_Message]] = {
    "document_ref": DocumentRef,
    "page_task": PageTask,
    "page_result": PageResult,
    "document_result": DocumentResult,
    "cached_result": CachedResult,
    "dead_letter": DeadLetter,
    "worker_metrics": WorkerMetrics,
}
