"""The analytics tables: one row per page (``pages``) and one per detection (``detections``) of
each document result, as pyarrow tables.

Columns (units in the names): times are UTC timestamps in milliseconds, durations milliseconds,
coordinates pixels of the OCR'd image. ``kafka_partition`` / ``kafka_offset`` say which
document-results record a row came from: the sink's exactly-once bookkeeping, and the way to
tell a document re-published later (a replayed dead letter) from a duplicate: keep the row with
the highest ``completed_at`` per ``(document_id, page_number)``.

A document that failed before any page was OCR'd (corrupt file, refused source) gets one page
row with ``page_number`` null and its reason code, so failures are counted where pages are.
"""

from __future__ import annotations

import pyarrow as pa

from schemas import DocumentResult

TIMESTAMP = pa.timestamp("ms", tz="UTC")

PAGES = pa.schema([
    ("document_id", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
    ("source_bucket", pa.string()), ("source_key", pa.string()), ("filename", pa.string()),
    ("page_number", pa.int32()), ("page_count", pa.int32()),
    ("document_status", pa.string()), ("status", pa.string()), ("error_code", pa.string()),
    ("text", pa.string()), ("detection_count", pa.int32()), ("mean_confidence", pa.float64()),
    ("engine", pa.string()), ("det_model", pa.string()), ("rec_model", pa.string()), ("device", pa.string()),
    ("text_source", pa.string()), ("rotation", pa.int16()),
    ("width_px", pa.int32()), ("height_px", pa.int32()), ("dpi", pa.int32()),
    ("download_ms", pa.float64()), ("render_ms", pa.float64()), ("det_ms", pa.float64()), ("rec_ms", pa.float64()),
    ("submitted_at", TIMESTAMP), ("completed_at", TIMESTAMP), ("latency_ms", pa.float64()),
])
"""``pages``: one row per page of each document result."""

DETECTIONS = pa.schema([
    ("document_id", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
    ("page_number", pa.int32()), ("line", pa.int32()), ("text", pa.string()), ("confidence", pa.float64()),
    ("x0", pa.float32()), ("y0", pa.float32()), ("x1", pa.float32()), ("y1", pa.float32()),
    ("polygon", pa.list_(pa.float32(), 8)), ("completed_at", TIMESTAMP),
])
"""``detections``: one row per detection (``line`` = its index in the page's reading order, from
0; ``x0..y1`` its polygon's bounding box; ``polygon`` the 4 points flattened, x0 y0 x1 y1 ...)."""

SCHEMAS = {"pages": PAGES, "detections": DETECTIONS}


def page_rows(result: DocumentResult, partition: int, offset: int) -> list[dict]:
    """The ``pages`` rows of one document result."""
    engine = result.engine
    src = result.source
    base = {
        "document_id": result.document_id, "kafka_partition": partition, "kafka_offset": offset,
        "source_bucket": src.bucket if src else None, "source_key": src.key if src else None,
        "filename": src.filename if src else None, "page_count": result.page_count,
        "document_status": result.status,
        "engine": engine.name if engine else None, "det_model": engine.det_model if engine else None,
        "rec_model": engine.rec_model if engine else None, "device": engine.device if engine else None,
        "submitted_at": result.submitted_at, "completed_at": result.completed_at,
        "latency_ms": float(result.completed_at - result.submitted_at) if result.submitted_at else None,
    }
    if not result.pages:
        return [{**base, "page_number": None, "status": result.status,
                 "error_code": result.error.code if result.error else None, "detection_count": 0}]
    rows = []
    for page in result.pages:
        conf = [d.confidence for d in page.detections]
        extra = page.model_extra or {}
        rows.append({
            **base, "page_number": page.page_number, "status": page.status,
            "error_code": page.error.code if page.error else None,
            "text": "\n".join(d.text for d in page.detections), "detection_count": len(page.detections),
            "mean_confidence": sum(conf) / len(conf) if conf else None,
            "text_source": getattr(page, "text_source", None) or extra.get("text_source") or "ocr",
            "rotation": getattr(page, "rotation", None) or extra.get("rotation"),
            "width_px": page.width, "height_px": page.height, "dpi": page.dpi,
            **{k: page.timings_ms.get(k) for k in ("download_ms", "render_ms", "det_ms", "rec_ms")},
        })
    return rows


def detection_rows(result: DocumentResult, partition: int, offset: int) -> list[dict]:
    """The ``detections`` rows of one document result."""
    rows = []
    for page in result.pages:
        for n, det in enumerate(page.detections):
            xs, ys = [p[0] for p in det.polygon], [p[1] for p in det.polygon]
            rows.append({
                "document_id": result.document_id, "kafka_partition": partition, "kafka_offset": offset,
                "page_number": page.page_number, "line": n, "text": det.text, "confidence": det.confidence,
                "x0": min(xs), "y0": min(ys), "x1": max(xs), "y1": max(ys),
                "polygon": [v for point in det.polygon for v in point], "completed_at": result.completed_at,
            })
    return rows


ROWS = {"pages": page_rows, "detections": detection_rows}


def s3_filesystem(s):
    """A :class:`pyarrow.fs.S3FileSystem` for the configured S3 endpoint (``OCRSTREAM_S3_*``), so
    pyarrow (and DuckDB scanning a pyarrow dataset) reads the tables in place, without DuckDB's
    ``httpfs`` extension (a download)::

        ds.dataset(f"{s.bucket}/{s.analytics_prefix}pages", filesystem=s3_filesystem(s),
                   format="parquet", partitioning="hive")
    """
    from pyarrow import fs

    return fs.S3FileSystem(access_key=s.s3_access_key.get_secret_value(),
                           secret_key=s.s3_secret_key.get_secret_value(), endpoint_override=s.s3_endpoint,
                           scheme="https" if s.s3_secure else "http", region=s.s3_region)
