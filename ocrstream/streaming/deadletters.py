"""Dead letters and failed document results: built once, for every stage.

A record a stage cannot process becomes a :class:`~schemas.DeadLetter` on the
dead-letter topic (original topic/partition/offset/key, reason code, error class,
attempts, stage, time; the same facts as headers) and, where the document id is known,
a ``failed`` :class:`~schemas.DocumentResult`, so the submitter learns of it.
"""

from __future__ import annotations

import time

import orjson
from confluent_kafka import Message

from ocrstream import metrics as m
from ocrstream.errors import OcrstreamError, ReasonCode
from schemas import DeadLetter, DocumentResult, Error, ObjectRef, encode

from .delivery import Output

DEAD_LETTER_VALUE_LIMIT = 64 * 1024  # bytes of the original value kept in a dead letter


def now_ms() -> int:
    """Wall-clock time in ms since the Unix epoch."""
    return int(time.time() * 1000)


def error_of(exc: BaseException, default: ReasonCode = ReasonCode.ENGINE_ERROR) -> Error:
    """The contract's ``{code, message}`` for any exception.

    Args:
        exc: the failure.
        default: code for exceptions that are not :class:`OcrstreamError` (``engine_error`` for
            what the engine raises; the stage runtime passes ``internal_error``).
    """
    if isinstance(exc, OcrstreamError):
        return Error(code=exc.code.value, message=exc.message)
    return Error(code=default.value, message=f"{type(exc).__name__}: {exc}")


def dead_letter(msg: Message, exc: BaseException, stage: str, attempts: int = 1,
                document_id: str | None = None, default: ReasonCode = ReasonCode.ENGINE_ERROR) -> DeadLetter:
    """A dead-letter record for a consumed message that could not be processed.

    Keeps the original topic/partition/offset/key, the reason code, the error
    class and the first 64 KiB of the original value (as text).
    """
    value = msg.value() or b""
    err = error_of(exc, default)
    key = msg.key()
    return DeadLetter(
        topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
        key=key.decode("utf-8", "replace") if key is not None else None,
        reason=err.code, error_class=type(exc).__name__, message=err.message, attempts=attempts,
        stage=stage, document_id=document_id,
        value=value[:DEAD_LETTER_VALUE_LIMIT].decode("utf-8", "replace"),
        value_truncated=len(value) > DEAD_LETTER_VALUE_LIMIT, failed_at=now_ms(),
    )


def dead_letter_headers(dl: DeadLetter) -> list[tuple[str, bytes]]:
    """The same facts as Kafka headers, for tools that route on headers without parsing JSON."""
    return [
        ("ocr.original.topic", dl.topic.encode()), ("ocr.original.partition", str(dl.partition).encode()),
        ("ocr.original.offset", str(dl.offset).encode()), ("ocr.reason", dl.reason.encode()),
        ("ocr.error.class", dl.error_class.encode()), ("ocr.attempts", str(dl.attempts).encode()),
        ("ocr.failed.at", str(dl.failed_at).encode()), ("ocr.stage", dl.stage.encode()),
    ]


def guess_document_id(value: bytes | None) -> str | None:
    """The ``document_id`` of a value that failed validation, if one can be read at all."""
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    doc_id = obj.get("document_id") if isinstance(obj, dict) else None
    return doc_id if isinstance(doc_id, str) and 0 < len(doc_id) <= 200 else None


def failed_document(document_id: str, exc: BaseException, source: ObjectRef | None = None,
                    submitted_at: int | None = None, default: ReasonCode = ReasonCode.ENGINE_ERROR,
                    webhook_url: str | None = None) -> DocumentResult:
    """A ``failed`` document result for a document that never reached the OCR stage
    (``webhook_url``: its checked completion callback, so the failure is called back too)."""
    return DocumentResult(document_id=document_id, source=source, status="failed", error=error_of(exc, default),
                          page_count=0, pages=[], submitted_at=submitted_at, completed_at=now_ms(),
                          webhook_url=webhook_url)


def failure_outputs(topic: str, results_topic: str | None, msg: Message, exc: BaseException, stage: str, *,
                    document_id: str | None = None, source: ObjectRef | None = None,
                    submitted_at: int | None = None, attempts: int = 1,
                    default: ReasonCode = ReasonCode.INTERNAL_ERROR, webhook_url: str | None = None) -> list[Output]:
    """The outputs of the one failure policy: a dead letter on ``topic`` and, when the document
    id is known (given, or read from the value) and ``results_topic`` is set, a ``failed``
    document result keyed by it (carrying ``webhook_url``, a callback the stage already checked).
    Counts ``ocrstream_dead_letters_total{stage,reason}``.
    """
    doc_id = document_id or guess_document_id(msg.value())
    dl = dead_letter(msg, exc, stage, attempts=attempts, document_id=doc_id, default=default)
    m.DEAD_LETTERS.labels(stage, dl.reason).inc()
    outs = [Output(topic, dl.key, encode(dl), dead_letter_headers(dl))]
    if doc_id and results_topic:
        result = failed_document(doc_id, exc, source, submitted_at, default, webhook_url)
        outs.append(Output(results_topic, doc_id, encode(result)))
    return outs
