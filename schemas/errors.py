"""Reason codes and the one exception type that carries them.

Every failure that reaches a dead-letter record or a ``failed`` result has a
reason code from :class:`ReasonCode`; downstream consumers switch on it.
"""

from __future__ import annotations

from enum import StrEnum


class ReasonCode(StrEnum):
    """Why a message or document failed (stable strings, part of the contract)."""

    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    MESSAGE_TOO_LARGE = "message_too_large"
    INVALID_KEY = "invalid_key"
    INVALID_BUCKET = "invalid_bucket"  # bucket name the S3 naming rules refuse
    FORBIDDEN_SOURCE = "forbidden_source"  # bucket/key outside OCRSTREAM_ALLOWED_SOURCES
    OBJECT_NOT_FOUND = "object_not_found"
    OBJECT_CHANGED = "object_changed"  # the object's ETag is no longer the referenced one (replaced)
    OBJECT_TOO_LARGE = "object_too_large"
    EMPTY_OBJECT = "empty_object"
    UNSUPPORTED_TYPE = "unsupported_type"
    TYPE_MISMATCH = "type_mismatch"
    CORRUPT_DOCUMENT = "corrupt_document"
    ENCRYPTED_DOCUMENT = "encrypted_document"
    NO_PAGES = "no_pages"
    TOO_MANY_PAGES = "too_many_pages"
    PAGE_TOO_LARGE = "page_too_large"
    STORAGE_ERROR = "storage_error"
    ENGINE_ERROR = "engine_error"
    ENGINE_TIMEOUT = "engine_timeout"
    RESULT_TOO_LARGE = "result_too_large"
    INVALID_PAGE_RANGE = "invalid_page_range"  # DocumentRef.pages malformed, or beyond the document's pages
    NO_TEXT_LAYER = "no_text_layer"  # OCRSTREAM_TEXT_LAYER=only and the page has no usable text layer
    # Completion webhooks (DocumentRef.webhook_url): only documents that name one can get these.
    INVALID_WEBHOOK_URL = "invalid_webhook_url"  # not an absolute http(s) URL, or credentials/fragment in it
    WEBHOOK_NOT_ALLOWED = "webhook_not_allowed"  # host, port or scheme outside the tenant's OCRSTREAM_WEBHOOK_ALLOWED_HOSTS
    WEBHOOK_FAILED = "webhook_failed"  # the receiver did not accept the call within the retry budget
    PROFILE_NOT_ALLOWED = "profile_not_allowed"  # DocumentRef.profile not allowed for the tenant (OCRSTREAM_PROFILE_ROUTES)
    LANE_NOT_ALLOWED = "lane_not_allowed"  # DocumentRef.priority names a lane the tenant may not use (OCRSTREAM_TENANT_LANES)
    # Stage runtime (ocrstream/streaming): failures that are not the input's fault.
    INTERNAL_ERROR = "internal_error"  # an unexpected exception while handling a record (a bug)
    INCOMPLETE = "incomplete"  # a document still missing pages after OCRSTREAM_DOCUMENT_DEADLINE_S
    WORKER_CRASH = "worker_crash"  # a page whose OCR ended the worker process max_page_attempts times
    STORAGE_TIMEOUT = "storage_timeout"  # download over OCRSTREAM_DOWNLOAD_TIMEOUT_S
    RENDER_TIMEOUT = "render_timeout"  # render/decode over OCRSTREAM_RENDER_TIMEOUT_S


class OcrstreamError(Exception):
    """A failure with a reason code.

    Args:
        code: the :class:`ReasonCode`.
        message: human-readable detail; never contains secrets or file bytes.
        transient: True when a retry may succeed (timeouts, unavailable services).
    """

    def __init__(self, code: ReasonCode, message: str, *, transient: bool = False):
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.transient = transient
