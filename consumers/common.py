"""Moved to :mod:`ocrstream.streaming` (the stage runtime); kept for imports that predate it."""

from ocrstream.streaming import (OffsetTracker, StopFlag, dead_letter, dead_letter_headers, error_of,  # noqa: F401
                                 failed_document, guess_document_id, now_ms, retry_transient)
