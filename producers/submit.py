"""``ocrstream submit FILE... [--wait] [--json]``: upload, publish, and optionally wait for results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ocrstream.preflight import ExitCode, PreflightError
from ocrstream.settings import Settings
from schemas import DocumentResult

from .publish import DocumentPublisher
from .results import ResultFollower


def submit_files(s: Settings, files: list[Path], *, wait: bool, as_json: bool, timeout_s: float | None,
                 dpi: int | None = None, pages: str | None = None, no_cache: bool = False,
                 webhook_url: str | None = None, priority: str | None = None,
                 out: TextIO = sys.stdout, profile: str | None = None) -> int:
    """Upload and publish ``files``; with ``wait``, print their document results.

    Args:
        pages: page ranges to OCR of every file (``"1-3,7"``, :mod:`ocrstream.page_ranges`);
            None = all pages. A file with fewer pages fails with ``invalid_page_range``.
        no_cache: OCR every file even when the result cache holds its result.
        webhook_url: completion callback of every file's document (:mod:`ocrstream.webhooks`).
        profile: the model profile to OCR with (None: the tenant's routing); one the tenant may
            not use fails with ``profile_not_allowed``.
        priority: the priority lane of every file (``interactive``, ``batch``; None: batch), see
            :meth:`~producers.publish.DocumentPublisher.publish_object`.

    Returns:
        exit code: 0 when every document succeeded (or ``wait`` is off), 1 when
        any failed, 2 on timeout.

    Raises:
        PreflightError: ``NO_INPUT`` when a file does not exist.
    """
    err = Console(stderr=True)
    for f in files:
        if not f.is_file():
            raise PreflightError(ExitCode.NO_INPUT, f"no such file: {f}")
    follower = ResultFollower(s) if wait else None  # positioned before publishing: no result slips past
    ids: dict[str, Path] = {}
    with DocumentPublisher(s) as pub:
        for f in files:
            ids[pub.upload_and_publish(f, dpi=dpi, pages=pages, no_cache=no_cache, webhook_url=webhook_url,
                                       profile=profile, priority=priority)] = f
    if not wait:
        for doc_id, f in ids.items():
            print(orjson.dumps({"document_id": doc_id, "file": str(f)}).decode() if as_json else f"{doc_id}  {f}",
                  file=out)
        return 0
    assert follower is not None
    show_progress = out.isatty()
    try:
        if show_progress:
            with Progress(TextColumn("OCR"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=Console(file=out)) as progress:
                task = progress.add_task("documents", total=len(ids))
                results = follower.wait_for(ids, timeout_s, on_result=lambda r: progress.advance(task))
        else:
            results = follower.wait_for(ids, timeout_s)
    except TimeoutError as exc:
        err.print(f"[red]timeout:[/] {exc}")
        results = exc.results  # type: ignore[attr-defined]
        _print(results, ids, as_json, out)
        return 2
    finally:
        follower.close()
    _print(results, ids, as_json, out)
    return 1 if any(r.status != "succeeded" for r in results.values()) else 0


def _print(results: dict[str, DocumentResult], ids: dict[str, Path], as_json: bool, out: TextIO) -> None:
    for doc_id in ids:
        r = results.get(doc_id)
        if r is None:
            continue
        if as_json:
            out.write(orjson.dumps(r.model_dump(mode="json", by_alias=True)).decode() + "\n")
            continue
        out.write(f"== {ids[doc_id].name}  {r.status}  pages={r.page_count}  id={doc_id}\n")
        if r.error:
            out.write(f"   error: {r.error.code}: {r.error.message}\n")
        for page in r.pages:
            out.write(f"   -- page {page.page_number} ({page.width}x{page.height}px, {len(page.detections)} lines)\n")
            for d in page.detections:
                out.write(f"   {d.text}\n")
    out.flush()
