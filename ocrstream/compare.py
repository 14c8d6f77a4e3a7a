"""``ocrstream compare``: how model profiles agree and how fast each one is.

Reads, by assignment (no consumer group joins or commits; group ids ``<prefix>compare-<random>``
only name the client), from a start time to the end offsets seen at the start:

- ``shadow-results``: the shadow copies' results (:mod:`topology.shadow`), key = the real
  document key;
- every ``document-results`` topic (the default tenant's and each tenant's), key ``document_id``;
- ``metrics``: the workers' samples (:class:`schemas.WorkerMetrics`, with their ``profile``).

The last record per key counts (the topics are compacted by key; a tombstone removes it).

**Agreement** (per pair *served profile* -> *shadow profile*): each document that has both results
is a pair; for pairs where both succeeded, the bag-of-words word F1 between the two texts
(:mod:`ocrstream.textmatch`, upper-cased whitespace-separated words as multisets; symmetric in
the two sides), as the mean over documents and micro-averaged over words, and the share of
documents whose words are identical. Pairs where exactly one side failed are counted as status
disagreements (no F1). No ground truth is involved: a high F1 means the shadow profile reads what
the served one reads, not that either is right.

**Latency** (per profile, served and shadow results alike): ``end_to_end_ms`` of the results
(submitted to completed, so queueing in front of a profile's workers counts) and the engine time
per page (``det_ms + rec_ms`` summed over a document's pages, divided by its pages), p50 and p95
(linear interpolation); from the metrics topic, per profile, the samples' pages and the median of
their batch latency p50 and p95.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import Consumer, KafkaException, TopicPartition

from schemas import DocumentResult, WorkerMetrics, decode
from topology import DEFAULT_PROFILE, SHADOW_RESULTS, document_key

from .kafka import consumer_config, read_to_end, topic_partitions, watermarks
from .settings import Settings
from .textmatch import WordCounts, prf, word_counts

READ_TIMEOUT_S = 120.0
"""How long one topic is read at most (the report then covers what was read)."""


@dataclass
class DocumentSummary:
    """What the report needs of one document result (the text only where it is compared)."""

    profile: str
    status: str
    pages: int
    end_to_end_ms: float | None
    engine_ms_per_page: float | None
    text: str | None = None


@dataclass
class Collected:
    """The results and samples :func:`collect` read."""

    results: dict[str, DocumentSummary] = field(default_factory=dict)  # document key -> the user's result
    shadows: dict[str, DocumentSummary] = field(default_factory=dict)  # document key -> the shadow copy's
    metrics: list[WorkerMetrics] = field(default_factory=list)
    undecodable: int = 0  # records that were not what the topic should hold


def summarize(result: DocumentResult, keep_text: bool) -> DocumentSummary:
    """The :class:`DocumentSummary` of one result (its text when ``keep_text``)."""
    engine_ms = result.timings_ms.get("det_ms", 0.0) + result.timings_ms.get("rec_ms", 0.0)
    pages = len(result.pages)
    return DocumentSummary(
        profile=result.profile or DEFAULT_PROFILE, status=result.status, pages=pages,
        end_to_end_ms=result.timings_ms.get("end_to_end_ms"),
        engine_ms_per_page=engine_ms / pages if pages and ("det_ms" in result.timings_ms
                                                           or "rec_ms" in result.timings_ms) else None,
        text=result.text() if keep_text else None)


def _read(s: Settings, topic: str, since_ms: int | None, timeout_s: float):
    """Records of ``topic`` from ``since_ms`` (None: the beginning) to the end offsets now."""
    conf = consumer_config(s, f"{s.group('compare')}-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
    conf.pop("group.instance.id", None)  # assign() only
    consumer = Consumer(conf)
    try:
        parts = [TopicPartition(topic, p) for p in topic_partitions(consumer, topic)]
        starts = {tp.partition: watermarks(consumer, tp)[0] for tp in parts}
        if since_ms is not None:
            found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in starts], timeout=10)
            for tp in found:
                # -1: no record at or after since_ms in this partition: start at its end
                starts[tp.partition] = tp.offset if tp.offset >= 0 else watermarks(consumer, tp)[1]
        assignment = [TopicPartition(topic, p, o) for p, o in starts.items()]
        consumer.assign(assignment)
        yield from read_to_end(consumer, assignment, timeout_s)
    finally:
        consumer.close()


def collect(s: Settings, since_ms: int | None = None, timeout_s: float = READ_TIMEOUT_S) -> Collected:
    """Read shadow results, document results (every tenant's) and worker metrics (see module
    docstring). Texts are kept only for documents that have a shadow result.

    Raises:
        KafkaException: a topic does not exist (``ocrstream topics apply``) or the broker is away.
    """
    out = Collected()
    for msg in _read(s, s.topic(SHADOW_RESULTS), since_ms, timeout_s):
        key = (msg.key() or b"").decode("utf-8", "replace")
        if msg.value() is None:
            out.shadows.pop(key, None)
            continue
        try:
            out.shadows[key] = summarize(decode(msg.value(), DocumentResult), keep_text=True)
        except Exception:  # noqa: BLE001 - a report reads what it can; the count says what it could not
            out.undecodable += 1
    for tenant in (None, *s.tenants):
        for msg in _read(s, s.tenant_topic(tenant, "document-results"), since_ms, timeout_s):
            key = document_key(tenant, (msg.key() or b"").decode("utf-8", "replace"))
            if msg.value() is None:
                out.results.pop(key, None)
                continue
            try:
                out.results[key] = summarize(decode(msg.value(), DocumentResult), keep_text=key in out.shadows)
            except Exception:  # noqa: BLE001
                out.undecodable += 1
    try:
        for msg in _read(s, s.topic("metrics"), since_ms, timeout_s):
            try:
                out.metrics.append(decode(msg.value(), WorkerMetrics))
            except Exception:  # noqa: BLE001
                out.undecodable += 1
    except KafkaException:
        pass  # no metrics topic: the report has the results' latencies only
    return out


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, linear interpolation) of ``values``, None when empty."""
    return round(float(np.percentile(values, q)), 1) if values else None


def report(c: Collected) -> dict:
    """The agreement and latency report of :func:`collect`'s data (see module docstring).

    Returns:
        ``{"documents", "shadow_documents", "undecodable", "pairs": [...], "profiles": [...]}``;
        a pair: ``profile``, ``shadow``, ``documents`` (with both results), ``both_succeeded``,
        ``status_disagreements``, ``word_f1_mean``, ``word_f1_micro``, ``identical_words`` (share),
        ``word_f1_min``; a profile: ``profile``, ``documents``, ``shadow_documents``, ``failed``,
        ``pages``, ``end_to_end_ms_p50``/``_p95``, ``engine_ms_per_page_p50``/``_p95``, and from
        the metrics topic ``metric_samples``, ``metric_pages``, ``batch_latency_ms_p50``/``_p95``
        (medians over samples; None without samples).
    """
    pairs: dict[tuple[str, str], dict] = {}
    for key, shadow in c.shadows.items():
        served = c.results.get(key)
        if served is None:
            continue
        p = pairs.setdefault((served.profile, shadow.profile), {"f1": [], "counts": WordCounts(0, 0, 0),
                                                               "identical": 0, "documents": 0, "disagree": 0})
        p["documents"] += 1
        if served.status != shadow.status:
            p["disagree"] += 1
        if served.status == shadow.status == "succeeded":
            counts = word_counts(shadow.text or "", served.text or "")
            p["f1"].append(prf(counts)[2])
            p["counts"] = p["counts"] + counts
            p["identical"] += sorted((shadow.text or "").upper().split()) == sorted((served.text or "").upper().split())
    pair_rows = []
    for (profile, shadow), p in sorted(pairs.items()):
        n = len(p["f1"])
        pair_rows.append({
            "profile": profile, "shadow": shadow, "documents": p["documents"], "both_succeeded": n,
            "status_disagreements": p["disagree"],
            "word_f1_mean": round(sum(p["f1"]) / n, 4) if n else None,
            "word_f1_micro": round(prf(p["counts"])[2], 4) if n else None,
            "word_f1_min": round(min(p["f1"]), 4) if n else None,
            "identical_words": round(p["identical"] / n, 4) if n else None,
        })
    by_profile: dict[str, dict] = {}
    for kind, docs in (("documents", c.results), ("shadow_documents", c.shadows)):
        for d in docs.values():
            row = by_profile.setdefault(d.profile, {"documents": 0, "shadow_documents": 0, "failed": 0, "pages": 0,
                                                    "e2e": [], "engine": []})
            row[kind] += 1
            row["failed"] += d.status == "failed"
            row["pages"] += d.pages
            if d.end_to_end_ms is not None:
                row["e2e"].append(d.end_to_end_ms)
            if d.engine_ms_per_page is not None and d.status == "succeeded":
                row["engine"].append(d.engine_ms_per_page)
    samples: dict[str, list[WorkerMetrics]] = {}
    for sample in c.metrics:
        samples.setdefault(sample.profile or DEFAULT_PROFILE, []).append(sample)
    profile_rows = []
    for profile in sorted(set(by_profile) | set(samples)):
        row = by_profile.get(profile, {"documents": 0, "shadow_documents": 0, "failed": 0, "pages": 0,
                                       "e2e": [], "engine": []})
        ms = samples.get(profile, [])
        timed50 = [x.batch_latency_ms_p50 for x in ms if x.batch_latency_ms_p50 is not None]
        timed95 = [x.batch_latency_ms_p95 for x in ms if x.batch_latency_ms_p95 is not None]
        profile_rows.append({
            "profile": profile, "documents": row["documents"], "shadow_documents": row["shadow_documents"],
            "failed": row["failed"], "pages": row["pages"],
            "end_to_end_ms_p50": percentile(row["e2e"], 50), "end_to_end_ms_p95": percentile(row["e2e"], 95),
            "engine_ms_per_page_p50": percentile(row["engine"], 50),
            "engine_ms_per_page_p95": percentile(row["engine"], 95),
            "metric_samples": len(ms), "metric_pages": sum(x.pages for x in ms),
            "batch_latency_ms_p50": percentile(timed50, 50), "batch_latency_ms_p95": percentile(timed95, 50),
        })
    return {"documents": len(c.results), "shadow_documents": len(c.shadows), "undecodable": c.undecodable,
            "pairs": pair_rows, "profiles": profile_rows}


def format_report(r: dict) -> str:
    """The report as two plain-text tables (agreement, latency)."""
    def table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
        cells = [[title for _, title in columns]] + [["-" if row[k] is None else str(row[k]) for k, _ in columns]
                                                     for row in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        return ["  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(line, widths)))
                for line in cells]

    lines = [f"{r['documents']} document results, {r['shadow_documents']} shadow results"
             + (f", {r['undecodable']} undecodable records" if r["undecodable"] else ""), "",
             "agreement (word F1, shadow against served):"]
    if r["pairs"]:
        lines += table([{**p, "pair": f"{p['profile']} -> {p['shadow']}"} for p in r["pairs"]],
                       [("pair", "profiles"), ("documents", "docs"), ("both_succeeded", "both ok"),
                        ("status_disagreements", "status differs"), ("word_f1_mean", "F1 mean"),
                        ("word_f1_micro", "F1 micro"), ("word_f1_min", "F1 min"),
                        ("identical_words", "identical")])
    else:
        lines.append("  no document has both a result and a shadow result")
    lines += ["", "latency per profile (ms):"]
    lines += table(r["profiles"], [("profile", "profile"), ("documents", "docs"), ("shadow_documents", "shadow"),
                                   ("failed", "failed"), ("pages", "pages"), ("end_to_end_ms_p50", "e2e p50"),
                                   ("end_to_end_ms_p95", "e2e p95"), ("engine_ms_per_page_p50", "engine/page p50"),
                                   ("engine_ms_per_page_p95", "engine/page p95"),
                                   ("batch_latency_ms_p50", "batch p50"), ("batch_latency_ms_p95", "batch p95")])
    return "\n".join(lines)


def since_ms_ago(hours: float | None) -> int | None:
    """The start time ``hours`` before now (ms since the epoch), None for the beginning."""
    return None if hours is None else int((time.time() - hours * 3600) * 1000)
