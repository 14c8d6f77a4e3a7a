"""``ocrstream top``: a live terminal view of the metrics topic (works over SSH).

One row per worker: pages/s, mean batch size, batch latency p50/p95, GPU
utilisation and memory (or CPU % and RSS on CPU hosts), consumer lag, errors.
"""

from __future__ import annotations

import time
import uuid
from typing import Callable

from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from rich.console import Console
from rich.live import Live
from rich.table import Table

from schemas import WorkerMetrics, decode

from .errors import OcrstreamError
from .kafka import consumer_config, topic_partitions, watermarks
from .settings import Settings


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.1f}" if n is not None else "-"


def render(latest: dict[str, WorkerMetrics]) -> Table:
    """The table for the most recent sample of each worker."""
    t = Table(title=f"ocrstream workers ({time.strftime('%H:%M:%S')})")
    for col in ("worker", "host", "pages/s", "batch", "p50 ms", "p95 ms", "GPU util", "GPU mem GiB",
                "CPU %", "RSS MiB", "lag", "errors", "age s"):
        t.add_column(col, justify="right" if col not in ("worker", "host") else "left")
    now = time.time() * 1000
    for wid, m in sorted(latest.items()):
        gpu_util = ", ".join(f"{g.utilization_pct:.0f}%" for g in m.gpus if g.utilization_pct is not None) if m.gpus else "-"
        gpu_mem = ", ".join(f"{_gib(g.memory_used_bytes)}/{_gib(g.memory_total_bytes)}" for g in m.gpus) if m.gpus else "-"
        t.add_row(wid, m.host, f"{m.pages_per_s:.2f}", f"{m.mean_batch_size:.1f}",
                  f"{m.batch_latency_ms_p50 or 0:.0f}", f"{m.batch_latency_ms_p95 or 0:.0f}", gpu_util, gpu_mem,
                  f"{m.cpu_pct:.0f}", f"{m.rss_bytes / 2**20:.0f}", str(sum(m.lag.values())),
                  str(sum(m.errors.values())), f"{(now - m.at) / 1000:.0f}")
    return t


def run_top(s: Settings, once: bool = False, history: int = 50, until: Callable[[], bool] | None = None,
            console: Console | None = None, snapshot_s: float = 10.0) -> dict[str, WorkerMetrics]:
    """Follow the metrics topic, starting ``history`` samples back per partition.

    On a terminal the table refreshes twice a second (rich ``Live``); otherwise (a log, a
    pipe) a snapshot is printed every ``snapshot_s`` seconds.

    Args:
        once: print one table after 5 s of reading and return.
        until: stop when this returns True (``make demo`` stops when its documents are done).
        console: where to draw (default: stdout).

    Returns:
        The latest sample per worker id.

    Raises:
        OcrstreamError: the metrics topic did not appear within 30 s.
    """
    c = Consumer(consumer_config(s, f"{s.group('top')}-{uuid.uuid4().hex[:8]}"))
    topic = s.topic("metrics")
    latest: dict[str, WorkerMetrics] = {}
    console = console or Console()
    try:
        parts = topic_partitions(c, topic)
        assignment = []
        for p in parts:
            low, high = watermarks(c, TopicPartition(topic, p))
            assignment.append(TopicPartition(topic, p, max(low, high - history) if high > 0 else OFFSET_END))
        c.assign(assignment)
        deadline = time.monotonic() + (5 if once else float("inf"))

        def running() -> bool:
            return time.monotonic() < deadline and not (until and until())

        def read() -> None:
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                try:
                    m = decode(msg.value(), WorkerMetrics)
                    latest[m.worker_id] = m
                except OcrstreamError:
                    pass  # not a sample: top shows what it can read

        if console.is_terminal and not once:
            with Live(render(latest), console=console, refresh_per_second=2) as live:
                while running():
                    read()
                    live.update(render(latest))
        else:
            next_print = time.monotonic() + (float("inf") if once else snapshot_s)
            while running():
                read()
                if time.monotonic() >= next_print:
                    console.print(render(latest))
                    next_print = time.monotonic() + snapshot_s
            console.print(render(latest))
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
    return latest
