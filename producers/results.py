"""Following the document-results topic: wait for the results of given documents,
or read the compacted topic to its end (last value per key)."""

from __future__ import annotations

import time
import uuid
from typing import Callable, Iterable

from confluent_kafka import Consumer

from ocrstream.errors import OcrstreamError
from ocrstream.kafka import assign_all, consumer_config, read_to_end
from ocrstream.settings import Settings
from schemas import DocumentResult, decode
from topology import follower_group


class ResultFollower:
    """Reads document results from the position the topic had at construction.

    Create it *before* publishing, so no result can slip past. Uses manual
    assignment (no consumer group), read_committed isolation.
    """

    def __init__(self, s: Settings, start: str = "end"):
        self.s = s
        conf = consumer_config(s, f"{s.group(follower_group(s.tenant))}-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
        self.consumer = Consumer(conf)
        self.topic = s.tenant_topic(s.tenant, "document-results")  # OCRSTREAM_TENANT: its own results
        self.parts = assign_all(self.consumer, self.topic, start)

    def wait_for(self, document_ids: Iterable[str], timeout_s: float | None = None,
                 on_result: Callable[[DocumentResult], None] | None = None) -> dict[str, DocumentResult]:
        """Results of ``document_ids`` (the first one seen per id).

        Raises:
            TimeoutError: not all arrived within ``timeout_s`` (the partial dict is on ``.results``).
        """
        wanted = set(document_ids)
        results: dict[str, DocumentResult] = {}
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while wanted - results.keys():
            if deadline is not None and time.monotonic() > deadline:
                err = TimeoutError(f"{len(wanted - results.keys())} of {len(wanted)} results missing after {timeout_s}s")
                err.results = results  # type: ignore[attr-defined]
                raise err
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            key = (msg.key() or b"").decode()
            if key in wanted and key not in results and msg.value() is not None:
                try:
                    result = decode(msg.value(), DocumentResult)
                except OcrstreamError:
                    continue
                results[key] = result
                if on_result:
                    on_result(result)
        return results

    def read_to_end(self, timeout_s: float = 30.0) -> dict[str, DocumentResult]:
        """Last value per key from the current position to the end of every partition."""
        latest: dict[str, DocumentResult] = {}
        for msg in read_to_end(self.consumer, self.parts, timeout_s):
            key = (msg.key() or b"").decode()
            if msg.value() is None:
                latest.pop(key, None)
            else:
                latest[key] = decode(msg.value(), DocumentResult)
        return latest

    def close(self) -> None:
        self.consumer.close()


def read_latest_results(s: Settings, timeout_s: float = 30.0) -> dict[str, DocumentResult]:
    """The compacted view of document results: last value per document id."""
    follower = ResultFollower(s, start="beginning")
    try:
        return follower.read_to_end(timeout_s)
    finally:
        follower.close()
