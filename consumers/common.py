"""Pieces every stage shares: dead letters, failed results, offset tracking, retries, shutdown."""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections import defaultdict
from typing import Callable, TypeVar

import orjson
from confluent_kafka import Message, TopicPartition

from ocrstream.errors import OcrstreamError, ReasonCode
from schemas import DeadLetter, DocumentResult, Error, ObjectRef

log = logging.getLogger(__name__)

T = TypeVar("T")

DEAD_LETTER_VALUE_LIMIT = 64 * 1024  # bytes of the original value kept in a dead letter


def now_ms() -> int:
    """Wall-clock time in ms since the Unix epoch."""
    return int(time.time() * 1000)


def error_of(exc: BaseException) -> Error:
    """The contract's ``{code, message}`` for any exception (unknown ones are ``engine_error``)."""
    if isinstance(exc, OcrstreamError):
        return Error(code=exc.code.value, message=exc.message)
    return Error(code=ReasonCode.ENGINE_ERROR.value, message=f"{type(exc).__name__}: {exc}")


def dead_letter(msg: Message, exc: BaseException, stage: str, attempts: int = 1,
                document_id: str | None = None) -> DeadLetter:
    """A dead-letter record for a consumed message that could not be processed.

    Keeps the original topic/partition/offset/key, the reason code, the error
    class and the first 64 KiB of the original value (as text).
    """
    value = msg.value() or b""
    err = error_of(exc)
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
        ("ocr.failed.at", str(dl.failed_at).encode()),
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
                    submitted_at: int | None = None) -> DocumentResult:
    """A ``failed`` document result for a document that never reached the OCR stage."""
    return DocumentResult(document_id=document_id, source=source, status="failed", error=error_of(exc),
                          page_count=0, pages=[], submitted_at=submitted_at, completed_at=now_ms())


def retry_transient(fn: Callable[[], T], *, attempts: int = 5, base_delay_s: float = 0.2,
                    max_delay_s: float = 5.0, stop: threading.Event | None = None) -> T:
    """Call ``fn``; retry transient :class:`OcrstreamError` with exponential backoff and full jitter.

    Backoff follows the "full jitter" scheme (AWS Architecture Blog, "Exponential
    Backoff And Jitter", 2015): sleep ``uniform(0, min(max, base * 2**n))``.

    Raises:
        OcrstreamError: the last error after ``attempts`` tries, or a permanent one at once.
    """
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except OcrstreamError as exc:
            if not exc.transient or attempt == attempts or (stop is not None and stop.is_set()):
                exc.attempts = attempt  # type: ignore[attr-defined]
                raise
            delay = random.uniform(0, min(max_delay_s, base_delay_s * 2 ** attempt))
            log.warning("transient failure (%s), retry %d/%d in %.2fs", exc.code, attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class OffsetTracker:
    """Which offsets of each partition are safe to commit.

    A partition's committable offset is the lowest offset still in flight (or one
    past the highest finished when none is): committing past an unfinished
    record would lose it on a crash. Not thread-safe: use from the poll thread.
    """

    def __init__(self) -> None:
        self._inflight: dict[tuple[str, int], set[int]] = defaultdict(set)
        self._done: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}

    def add(self, topic: str, partition: int, offset: int) -> None:
        """Record that ``offset`` was consumed and is being processed."""
        self._inflight[(topic, partition)].add(offset)

    def done(self, topic: str, partition: int, offset: int) -> None:
        """Record that the outputs of ``offset`` are acknowledged."""
        tp = (topic, partition)
        self._inflight[tp].discard(offset)
        self._done[tp] = max(self._done.get(tp, -1), offset)

    def inflight(self) -> int:
        """Records consumed and not yet done, over all partitions."""
        return sum(len(v) for v in self._inflight.values())

    def committable(self, only_new: bool = True) -> list[TopicPartition]:
        """Offsets to commit (next offset to read per partition)."""
        out = []
        for tp, done in self._done.items():
            pending = self._inflight.get(tp)
            nxt = min(pending) if pending else done + 1
            if only_new and self._committed.get(tp, -1) >= nxt:
                continue
            out.append(TopicPartition(tp[0], tp[1], nxt))
        return out

    def mark_committed(self, tps: list[TopicPartition]) -> None:
        """Remember what was committed, so it is not committed again."""
        for tp in tps:
            self._committed[(tp.topic, tp.partition)] = tp.offset

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Drop all state of revoked/lost partitions."""
        for p in partitions:
            key = (p.topic, p.partition)
            self._inflight.pop(key, None)
            self._done.pop(key, None)
            self._committed.pop(key, None)


class StopFlag:
    """Set by SIGTERM/SIGINT (when installed in the main thread) or by :meth:`set`."""

    def __init__(self, install_signals: bool = True) -> None:
        self.event = threading.Event()
        if install_signals and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handler)
            signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame) -> None:
        log.info("signal %s: stopping", signum)
        self.event.set()

    def set(self) -> None:
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()
