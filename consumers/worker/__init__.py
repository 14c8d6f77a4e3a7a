"""OCR worker: a consumer-group member that turns page tasks into page results.

Read it one part at a time:

- :mod:`.stage`: the loop (:class:`OcrWorker`) and the rebalance callbacks;
- :mod:`.fetch`: accepted records, download + render in a thread pool, their time budgets;
- :mod:`.batching`: which ready pages go to the engine together (:class:`BatchLimit`);
- :mod:`.engine_thread`: the single engine thread, out-of-memory splitting, the engine budget;
- :mod:`.attempts`: poison pages (in-flight marks in the ``page-attempts`` topic);
- :mod:`.results`: page results, dead letters, the metrics-topic sample.

Kafka mechanics (poll, commit policy, failure policy, probes) are the stage runtime's
(:mod:`ocrstream.streaming`).
"""

from .batching import BatchLimit
from .engine_thread import EngineStuck, _run_batch, run_engine
from .items import WorkItem
from .stage import OcrWorker, run_worker

__all__ = ["BatchLimit", "EngineStuck", "OcrWorker", "WorkItem", "_run_batch", "run_engine", "run_worker"]
