"""Which offsets of each partition are safe to commit while records are still in flight."""

from __future__ import annotations

from collections import defaultdict

from confluent_kafka import TopicPartition


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

    def done(self, topic: str, partition: int, offset: int) -> bool:
        """Record that the outputs of ``offset`` are acknowledged.

        Returns:
            False (and records nothing) when ``offset`` is not in flight on this partition:
            the partition was revoked or lost since the record was consumed (its state was
            :meth:`forget`-ten), so a late result must not move its commit position.
        """
        tp = (topic, partition)
        pending = self._inflight.get(tp)
        if pending is None or offset not in pending:
            return False
        pending.discard(offset)
        self._done[tp] = max(self._done.get(tp, -1), offset)
        return True

    def inflight(self, topics: set[str] | None = None) -> int:
        """Records consumed and not yet done, over all partitions (of ``topics``; None: of every topic)."""
        return sum(len(v) for tp, v in self._inflight.items() if topics is None or tp[0] in topics)

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
