"""The whole system as a user runs it: `ocrstream run` + `ocrstream submit --wait --json`."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from devtools.samples import make_samples, read_truth
from devtools.textmetrics import word_prf

from conftest import REPO, engine_name, settings_env, shared_data

pytestmark = pytest.mark.integration


@pytest.fixture
def system(settings, processes):
    """Every stage running as `ocrstream run` would start it (here: one process per stage)."""
    for stage in ("splitter", "assembler", "worker"):
        processes.start(settings, stage)
    return settings


def _submit(s, files, timeout=600):
    return subprocess.run([sys.executable, "-m", "ocrstream.cli", "submit", "--wait", "--json", "--timeout", "300",
                           *map(str, files)], env=settings_env(s), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_submit_wait_json_returns_one_result_per_document_with_text(system, tmp_path):
    docs = make_samples(tmp_path / "samples")
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\n garbage")
    proc = _submit(system, [*docs, bad])
    assert proc.returncode == 1, proc.stderr[-2000:]  # one document failed -> non-zero exit
    results = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(docs) + 1
    by_name = {r["source"]["filename"]: r for r in results}
    assert by_name["broken.pdf"]["status"] == "failed"
    assert by_name["broken.pdf"]["error"]["code"] == "corrupt_document"
    for doc in docs:
        r = by_name[doc.name]
        assert r["status"] == "succeeded", r["error"]
        pages = read_truth(doc)
        truth = "\n".join(pages)
        assert r["page_count"] == len(pages), doc.name
        assert [p["page_number"] for p in r["pages"]] == list(range(1, r["page_count"] + 1))
        text = "\n".join(d["text"] for p in r["pages"] for d in p["detections"])
        _, _, f1 = word_prf(text, truth)
        assert f1 >= 0.8, (doc.name, f1)
        for p in r["pages"]:
            assert p["width"] > 0 and p["height"] > 0
            assert (p["dpi"] == 150) == doc.name.endswith(".pdf")
            for d in p["detections"]:
                assert len(d["polygon"]) == 4 and 0 <= d["confidence"] <= 1
        assert r["engine"]["name"] == engine_name(system)
        assert r["timings_ms"]["end_to_end_ms"] > 0


@pytest.mark.slow
def test_real_scanned_court_filing_produces_text_on_every_page(system):
    scans = shared_data("scans-dev")
    pdf = sorted(scans.glob("*.pdf"))[0]
    proc = _submit(system, [pdf], timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (r,) = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert r["status"] == "succeeded" and r["page_count"] >= 1
    for p in r["pages"]:
        words = " ".join(d["text"] for d in p["detections"]).split()
        assert len(words) >= 5, (p["page_number"], words[:10])  # some pages are short stamps or cover sheets
