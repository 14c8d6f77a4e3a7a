"""``ocrstream top``: a live terminal view of the metrics topic (works over SSH).

One row per worker: pages/s and mean batch size over the last minute, batch latency
p50/p95, GPU utilisation and memory (or CPU % and RSS on CPU hosts), consumer lag, errors.
"""

from __future__ import annotations

import sys
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


def _ms(v: float | None) -> str:
    return f"{v:.0f}" if v is not None else "-"  # no batch finished in the interval


WINDOW_S = 60.0  # rates over the last minute: one sample interval often ends no batch


def render(recent: dict[str, list[WorkerMetrics]], window_s: float = WINDOW_S) -> Table:
    """One row per worker from its samples of the last ``window_s`` seconds (oldest first).

    pages/s, mean batch size and errors cover the whole window (a single 10-s sample of a
    worker whose batches take longer than that reads 0); batch latency p50/p95 come from the
    newest sample that finished a batch; CPU, RSS, GPU and lag are the newest sample's.
    """
    t = Table(title=f"ocrstream workers ({time.strftime('%H:%M:%S')}; rates over {window_s:.0f} s)")
    for col in ("worker", "host", "pages/s", "batch", "p50 ms", "p95 ms", "GPU util", "GPU mem GiB",
                "CPU %", "RSS MiB", "lag", "errors", "age s"):
        t.add_column(col, justify="right" if col not in ("worker", "host") else "left")
    now = time.time() * 1000
    for wid, samples in sorted(recent.items()):
        if not samples:
            continue
        m = samples[-1]
        seconds = sum(x.interval_s for x in samples)
        batches = sum(x.batches for x in samples)
        batched_pages = sum(x.mean_batch_size * x.batches for x in samples)
        timed = next((x for x in reversed(samples) if x.batch_latency_ms_p50 is not None), None)
        gpu_util = ", ".join(f"{g.utilization_pct:.0f}%" for g in m.gpus if g.utilization_pct is not None) if m.gpus else "-"
        gpu_mem = ", ".join(f"{_gib(g.memory_used_bytes)}/{_gib(g.memory_total_bytes)}" for g in m.gpus) if m.gpus else "-"
        t.add_row(wid, m.host, f"{sum(x.pages for x in samples) / seconds if seconds else 0:.2f}",
                  f"{batched_pages / batches if batches else 0:.1f}",
                  _ms(timed.batch_latency_ms_p50 if timed else None), _ms(timed.batch_latency_ms_p95 if timed else None),
                  gpu_util, gpu_mem, f"{m.cpu_pct:.0f}", f"{m.rss_bytes / 2**20:.0f}", str(sum(m.lag.values())),
                  str(sum(sum(x.errors.values()) for x in samples)), f"{(now - m.at) / 1000:.0f}")
    return t


def run_top(s: Settings, once: bool = False, history: int = 50, until: Callable[[], bool] | None = None,
            console: Console | None = None, snapshot_s: float = 10.0) -> dict[str, list[WorkerMetrics]]:
    """Follow the metrics topic, starting ``history`` samples back per partition.

    On a terminal the table refreshes twice a second (rich ``Live``); otherwise (a log, a
    pipe) a snapshot is printed every ``snapshot_s`` seconds.

    Args:
        once: print one table after 5 s of reading and return.
        until: stop when this returns True (``make demo`` stops when its documents are done).
        console: where to draw (default: stdout).

    Returns:
        Per worker id, its samples of the last ``WINDOW_S`` seconds, oldest first.

    Raises:
        OcrstreamError: the metrics topic did not appear within 30 s.
    """
    c = Consumer(consumer_config(s, f"{s.group('top')}-{uuid.uuid4().hex[:8]}"))
    topic = s.topic("metrics")
    recent: dict[str, list[WorkerMetrics]] = {}  # worker id -> samples of the last WINDOW_S, oldest first
    # Off a terminal (a log, `make demo > file`) rich would wrap to 80 columns and cut the figures.
    console = console or (Console() if sys.stdout.isatty() else Console(width=160))
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
                except OcrstreamError:
                    return  # not a sample: top shows what it can read
                window = recent.setdefault(m.worker_id, [])
                window.append(m)
                cutoff = m.at - WINDOW_S * 1000
                window[:] = [x for x in window if x.at > cutoff]

        if console.is_terminal and not once:
            with Live(render(recent), console=console, refresh_per_second=2) as live:
                while running():
                    read()
                    live.update(render(recent))
        else:
            next_print = time.monotonic() + (float("inf") if once else snapshot_s)
            while running():
                read()
                if time.monotonic() >= next_print:
                    console.print(render(recent))
                    next_print = time.monotonic() + snapshot_s
            console.print(render(recent))
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
    return recent
