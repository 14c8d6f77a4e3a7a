"""The analytics sink (``ocrstream sink parquet``): document results as Parquet tables in object
storage, for DuckDB, Spark or pandas.

A consumer group (``<group_prefix>analytics``) on the document-results topic. Each record becomes
rows of two tables (:mod:`.tables`): ``pages`` and ``detections``, written with pyarrow under
``OCRSTREAM_ANALYTICS_PREFIX`` (``analytics/``), partitioned by the UTC date of ``completed_at``
(Hive style: ``analytics/pages/dt=2026-11-24/``).

**Exactly once.** Records are buffered per Kafka partition and flushed every
``OCRSTREAM_PARQUET_FLUSH_ROWS`` page rows or ``OCRSTREAM_PARQUET_FLUSH_S`` seconds (and on
revoke and shutdown). A flush of partition *p* covering offsets *a..b* writes
``p<p>-<a>-<b>.parquet`` into each table's date folder, and only then commits offset *b + 1*
(dead letters of the range go out with that commit). A file's name says which offsets its rows
come from, and no offset is written twice: before writing, the flush lists the date folder and
drops the rows whose ``(partition, offset)`` is already covered by another file's name or by the
folder's compaction manifest. So a crash between upload and commit (the range is read again,
maybe with other flush boundaries), a rebalance, an aborted transaction or a deliberate replay
from the beginning all leave each record's rows in the table once. The rows carry
``kafka_partition`` and ``kafka_offset``.

**Compaction** (``ocrstream sink parquet --compact [--date YYYY-MM-DD]``; default: every date
before today, UTC) merges a date folder's files into one ``compacted-<ms>.parquet``, in an order
that a crash at any step leaves recoverable and a rerun finishes: (1) write the merged file,
(2) write ``_manifest.json`` naming it and the offset ranges it holds, (3) delete the merged files.
A compacted file the manifest does not name is an orphan of a crash before (2) and is deleted;
small files whose ranges the manifest already holds are deleted without merging them again.
Readers that glob the folder see duplicates only between (1) and (3) of a running compaction:
compact closed days.

A record that is not a document result is a dead letter (reason code) and its partition goes on;
a tombstone (a deletion request) writes nothing (rows already written stay: delete them with the
store's tools if a deletion request must reach analytics). When the store is away the flush is
retried with backoff while the partitions are paused, so memory stays bounded and nothing is
skipped.
"""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Message, TopicPartition

from ocrstream import metrics as m
from ocrstream.errors import OcrstreamError
from ocrstream.settings import Settings
from ocrstream.storage import ObjectStore
from ocrstream.streaming import Output, StageRuntime, StopFlag, retry_transient, run_stage
from ocrstream.streaming.loop import RecordContext
from schemas import DocumentResult, decode

from .tables import ROWS, SCHEMAS

log = logging.getLogger(__name__)

STAGE = "analytics"
MANIFEST = "_manifest.json"
_RANGE_FILE = re.compile(r"p(\d+)-(\d+)-(\d+)\.parquet$")

Ranges = dict[int, list[tuple[int, int]]]  # partition -> [(first offset, last offset)], inclusive


def day(ms: int) -> str:
    """``YYYY-MM-DD``: the UTC date of a time in ms since the epoch."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def file_name(partition: int, first: int, last: int) -> str:
    """The name of a flush's file: partition and offset range, zero-padded so names sort by offset."""
    return f"p{partition:03d}-{first:020d}-{last:020d}.parquet"


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, adjacent ones joined (inclusive ranges)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def covered(ranges: list[tuple[int, int]], offset: int) -> bool:
    return any(a <= offset <= b for a, b in ranges)


def to_parquet(table: str, rows: list[dict]) -> bytes:
    """Rows as Parquet file bytes (zstd) with the table's schema (:mod:`.tables`)."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[table]), buf, compression="zstd")
    return buf.getvalue()


class Folder:
    """One table's date folder in the store: its files and what they cover."""

    def __init__(self, store: ObjectStore, s: Settings, table: str, dt: str, stop=None):
        self.store, self.s, self.table, self.dt, self.stop = store, s, table, dt, stop
        self.prefix = f"{s.analytics_prefix}{table}/dt={dt}/"

    def listing(self) -> tuple[dict[str, tuple[int, int, int]], list[str], dict]:
        """``({small file key: (partition, first, last)}, [compacted file keys], manifest)``.

        Raises:
            OcrstreamError: ``storage_error`` (after retries).
        """
        keys = [o.key for o in retry_transient(lambda: self.store.list(self.prefix), stop=self.stop)]
        small, compacted, manifest = {}, [], {"file": None, "ranges": {}}
        for key in keys:
            name = key[len(self.prefix):]
            if (match := _RANGE_FILE.fullmatch(name)) is not None:
                small[key] = tuple(int(g) for g in match.groups())
            elif name.startswith("compacted-") and name.endswith(".parquet"):
                compacted.append(key)
            elif name == MANIFEST:
                manifest = orjson.loads(retry_transient(
                    lambda: self.store.get_bytes(self.s.bucket, key, 64 << 20), stop=self.stop))
        return small, compacted, manifest

    def coverage(self, partition: int, but: str | None = None) -> list[tuple[int, int]]:
        """Offset ranges of ``partition`` already written to this folder (except file ``but``)."""
        small, _, manifest = self.listing()
        ranges = [tuple(r) for r in manifest.get("ranges", {}).get(str(partition), [])]
        ranges += [(a, b) for key, (p, a, b) in small.items() if p == partition and key != but]
        return merge_ranges(ranges)


@dataclass
class _Buffer:
    """Records of one partition not yet flushed."""

    first: int
    last: int
    started: float  # time.monotonic() of the first record
    records: list[tuple[int, DocumentResult]] = field(default_factory=list)
    dead_letters: list[Output] = field(default_factory=list)
    page_rows: int = 0


class ParquetSink:
    """The analytics sink stage (see module docstring).

    Args:
        s: settings.
        stop: stop flag (default: SIGTERM/SIGINT handlers).
    """

    def __init__(self, s: Settings, stop: StopFlag | None = None):
        self.s = s
        self.store = ObjectStore(s)
        self.topic = s.topic("document-results")
        self.buffers: dict[int, _Buffer] = {}
        self.rt = StageRuntime(s, STAGE, [self.topic], stop=stop, on_revoke=self._on_revoke, on_lost=self._drop,
                               on_rewind=self._drop, results_topic=None, busy=lambda: bool(self.buffers))
        self.stop = self.rt.stop
        self._retry_at = 0.0
        self._backoff = 1.0

    # --- rebalance callbacks ------------------------------------------------------------
    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:  # what we read of them is written and committed before they go
            if tp.partition in self.buffers:
                try:
                    self.flush(tp.partition)
                except OcrstreamError as exc:  # the next owner reads the range again: nothing is lost
                    log.warning("analytics: flush of revoked partition %d failed (%s)", tp.partition, exc)
        self._drop(partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.buffers.pop(tp.partition, None)

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        """Consume, buffer, flush, commit until stopped; then flush what is buffered.

        Raises:
            FatalKafkaError: see :mod:`ocrstream.streaming.loop`.
        """
        self.rt.start()
        try:
            while not self.stop.is_set():
                self.flush_due()
                msg = self.rt.poll(0.5)
                if msg is not None:
                    self.accept(msg)
            try:
                self.flush_due(force=True)
            except OcrstreamError as exc:
                log.warning("analytics: final flush failed (%s): the range is read again at the next start", exc)
        finally:
            self.rt.close()

    def accept(self, msg: Message) -> None:
        """Buffer one record (or its dead letter)."""
        p, offset = msg.partition(), msg.offset()
        buf = self.buffers.get(p)
        if buf is None:
            buf = self.buffers[p] = _Buffer(first=offset, last=offset, started=time.monotonic())
        buf.last = offset
        ctx_result: list[DocumentResult] = []

        def handle(record: Message, ctx: RecordContext) -> list[Output]:
            if record.value() is None:
                return []  # a tombstone: nothing to add
            result = decode(record.value(), DocumentResult)
            ctx.document_id = result.document_id
            ctx_result.append(result)
            return []

        buf.dead_letters += self.rt.guard(msg, handle)
        if ctx_result:
            buf.records.append((offset, ctx_result[0]))
            buf.page_rows += max(1, len(ctx_result[0].pages))

    def flush_due(self, force: bool = False) -> None:
        """Flush the partitions whose buffer is full or old (all with ``force``); while the store
        fails, pause fetching and retry with backoff."""
        now = time.monotonic()
        if now < self._retry_at and not force:
            return
        due = [p for p, b in self.buffers.items()
               if force or b.page_rows >= self.s.parquet_flush_rows or now - b.started >= self.s.parquet_flush_s]
        for p in due:
            try:
                self.flush(p)
            except OcrstreamError as exc:
                if force or not exc.transient:
                    raise
                self.rt.pause()  # memory stays bounded while the store is away
                self._retry_at = time.monotonic() + self._backoff
                log.warning("analytics: flush of partition %d failed (%s): retrying in %.0fs", p, exc, self._backoff)
                self._backoff = min(60.0, self._backoff * 2)
                return
        if due:
            self._backoff = 1.0
            self.rt.resume()

    def flush(self, partition: int) -> None:
        """Write partition ``partition``'s buffer as Parquet files, then commit its offsets.

        Raises:
            OcrstreamError: ``storage_error`` (the buffer is kept; nothing was committed).
        """
        buf = self.buffers[partition]
        t0 = time.perf_counter()
        name = file_name(partition, buf.first, buf.last)
        for table, make_rows in ROWS.items():
            by_day: dict[str, list[dict]] = {}
            for offset, result in buf.records:
                by_day.setdefault(day(result.completed_at), []).extend(make_rows(result, partition, offset))
            for dt, rows in by_day.items():
                folder = Folder(self.store, self.s, table, dt, self.stop.event)
                done = folder.coverage(partition, but=folder.prefix + name)
                rows = [r for r in rows if not covered(done, r["kafka_offset"])]
                if not rows:
                    continue
                body = to_parquet(table, rows)
                retry_transient(lambda: self.store.put_bytes(folder.prefix + name, body, "application/vnd.apache.parquet"),
                                stop=self.stop.event)
                m.ANALYTICS_ROWS.labels(table).inc(len(rows))
                m.ANALYTICS_FILES.labels(table).inc()
        # The files are durable: now the offsets (and the range's dead letters).
        if self.rt.publish(buf.dead_letters, [TopicPartition(self.topic, partition, buf.last + 1)]):
            log.info("analytics: partition %d offsets %d-%d flushed in %.0f ms", partition, buf.first, buf.last,
                     (time.perf_counter() - t0) * 1000)
        self.buffers.pop(partition, None)


def compact(s: Settings, table: str, dt: str, store: ObjectStore | None = None) -> dict:
    """Merge one date folder of ``table`` into one file (see module docstring for the order of steps).

    Returns:
        ``{"table", "dt", "merged": files merged, "deleted": files deleted, "rows": rows in the
        compacted file, "file": its key or None}``.

    Raises:
        OcrstreamError: ``storage_error`` (a rerun finishes what was started).
    """
    store = store or ObjectStore(s)
    folder = Folder(store, s, table, dt)
    small, compacted, manifest = folder.listing()
    current = manifest.get("file")
    done = {int(p): [tuple(r) for r in rs] for p, rs in manifest.get("ranges", {}).items()}
    orphans = [k for k in compacted if k != current]  # a compaction that crashed before its manifest
    already = [k for k, (p, a, b) in small.items() if covered(done.get(p, []), a) and covered(done.get(p, []), b)]
    fresh = {k: v for k, v in small.items() if k not in already}
    deleted: list[str] = []
    if not fresh:
        for key in orphans + already:
            retry_transient(lambda: store.remove(s.bucket, key))
        return {"table": table, "dt": dt, "merged": 0, "deleted": len(orphans) + len(already), "rows": None,
                "file": current}
    parts = ([current] if current and current in compacted else []) + sorted(fresh)
    tables = [pq.read_table(io.BytesIO(retry_transient(lambda: store.get_bytes(s.bucket, k, 1 << 34))))
              for k in parts]
    merged = pa.concat_tables(tables).sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    key = f"{folder.prefix}compacted-{int(time.time() * 1000)}.parquet"
    buf = io.BytesIO()
    pq.write_table(merged, buf, compression="zstd")
    body = buf.getvalue()
    retry_transient(lambda: store.put_bytes(key, body, "application/vnd.apache.parquet"))            # (1)
    for p, a, b in fresh.values():
        done.setdefault(p, []).append((a, b))
    new_manifest = orjson.dumps({"file": key, "ranges": {str(p): merge_ranges(r) for p, r in sorted(done.items())},
                                 "rows": merged.num_rows, "compacted_at": int(time.time() * 1000)})
    retry_transient(lambda: store.put_bytes(folder.prefix + MANIFEST, new_manifest, "application/json"))  # (2)
    for old in [k for k in parts if k != key] + orphans + already:                                    # (3)
        retry_transient(lambda: store.remove(s.bucket, old))
        deleted.append(old)
    m.ANALYTICS_COMPACTIONS.labels(table).inc()
    return {"table": table, "dt": dt, "merged": len(parts), "deleted": len(deleted), "rows": merged.num_rows,
            "file": key}


def dates(s: Settings, table: str, store: ObjectStore | None = None) -> list[str]:
    """The ``dt`` values ``table`` has folders for, sorted."""
    store = store or ObjectStore(s)
    prefix = f"{s.analytics_prefix}{table}/dt="
    return sorted({o.key[len(prefix):].split("/", 1)[0] for o in store.list(prefix)})


def compact_closed_days(s: Settings, only: str | None = None) -> list[dict]:
    """Compact every table's folders of ``only`` (a date), or of every date before today (UTC)."""
    store = ObjectStore(s)
    today = day(int(time.time() * 1000))
    out = []
    for table in SCHEMAS:
        for dt in ([only] if only else [d for d in dates(s, table, store) if d < today]):
            out.append(compact(s, table, dt, store))
    return out


def run_parquet_sink(s: Settings, stop: StopFlag | None = None) -> int:
    """Run the analytics sink until SIGTERM/SIGINT; 0 after a graceful stop, 2 after a fatal Kafka error."""
    return run_stage(lambda: ParquetSink(s, stop=stop))
