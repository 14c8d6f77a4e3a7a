"""The stage runtime: everything a long-running stage shares.

A stage (splitter, OCR worker, assembler, drop-folder watcher) is its handling of one
record or batch plus its own state; this package does the rest, once:

- :mod:`.loop`: :class:`StageRuntime` (subscribe, poll, rebalance callbacks and the
  assignment set, the Kafka error policy, readiness and liveness, close) and
  :func:`run_stage` (fatal errors exit non-zero for the supervisor).
- :mod:`.delivery`: the one commit policy (at-least-once flush-then-commit, or one
  transaction per unit of work) and what happens when it fails.
- :mod:`.deadletters`: dead letters and failed document results, built and counted once.
- :mod:`.offsets`: which offsets are safe to commit while records are in flight.
- :mod:`.health`: ``/metrics`` (prometheus-client's WSGI app), ``/healthz``, ``/readyz``.
- :mod:`ocrstream.retry`: the one retry policy (tenacity), re-exported here.
- :mod:`.signals`: SIGTERM/SIGINT as a stop flag.
- :mod:`.faults`: named fault points for the failure tests (off unless ``OCRSTREAM_FAULT_POINT`` is set).
"""

from .deadletters import dead_letter, dead_letter_headers, error_of, failed_document, guess_document_id, now_ms
from .delivery import Delivery, DeliveryError, FatalKafkaError, Output, TransactionAborted
from .loop import EXIT_FATAL, StageRuntime, run_stage
from .offsets import OffsetTracker
from ocrstream.retry import retry_transient
from .signals import StopFlag

__all__ = [
    "Delivery", "DeliveryError", "EXIT_FATAL", "FatalKafkaError", "OffsetTracker", "Output", "StageRuntime",
    "StopFlag", "TransactionAborted", "dead_letter", "dead_letter_headers", "error_of", "failed_document",
    "guess_document_id", "now_ms", "retry_transient", "run_stage",
]
