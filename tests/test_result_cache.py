"""The content-hash result cache (issue 14 item 2; ocrstream/result_cache.py, consumers/result_cache.py).

Unit tests of the key material (every output-shaping input moves the key, the rest does not), the
worker's re-keying and the splitter's reading of the workers' fingerprints; then one
module-scoped pipeline against the real broker and S3 server (splitter, worker and assembler in
threads, exactly-once delivery, so cache entries and hits travel in transactions) with an engine
that numbers every page it reads: a page that says ``READING 7`` was the engine's 7th page, so a
result shows whether it was OCR'd or copied, and the engine's counter, the pages topic and the
page-results topic show that a hit called nothing. Every wait is bounded and fails the test when
it runs out.
"""

from __future__ import annotations

import io
import threading
import time
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from consumers.assembler import Assembler
from consumers.result_cache import WorkerFingerprints
from consumers.splitter import Splitter
from consumers.worker import OcrWorker, WorkItem
from consumers.worker.results import WorkerStats, page_result
from ocrstream import result_cache as rc
from ocrstream.cli import build_parser
from ocrstream.engine import PageOcr, TextLine
from ocrstream.kafka import consumer_config
from ocrstream.settings import Settings
from ocrstream.storage import ObjectStore
from ocrstream.streaming import StopFlag
from producers.delete import delete_documents
from producers.publish import DocumentPublisher, stable_document_id
from producers.results import ResultFollower
from producers.submit import submit_files
from schemas import EngineInfo, ObjectRef, PageResult, PageTask, WorkerMetrics, decode
from topology import topic_specs

from conftest import StageThreads, base_settings, make_pdf

WAIT_S = 90  # per result: bounded, generous for a busy 2-core machine


# --------------------------------------------------------------------------- units

# One value per output-shaping setting that differs from base_settings' (see output_fingerprint).
SHAPING = {
    "engine": "onnxruntime", "engine_device": "cuda:0", "engine_plugin": "tests.fault_engines:x",
    "det_limit_side_len": 1600, "det_min_side_len": 640, "det_box_thresh": 0.45, "det_unclip_ratio": 2.0,
    "text_score": 0.3, "rec_space_threshold": 0.1, "rec_space_threshold_letters": 0.2, "use_angle_cls": True,
    "det_batch_size": 4, "rec_batch_size": 8, "page_orientation": "off", "orientation_min_confidence": 0.8,
    "text_layer": "only", "max_page_pixels": 1_000_000, "det_int8": True,
}
# Settings that change speed or locations, not pages.
NEUTRAL = {
    "engine_threads": 2, "batch_max_pages": 3, "batch_max_wait_ms": 7, "max_inflight_pages": 5, "prepare_threads": 3,
    "page_timeout_s": 11.0, "render_timeout_s": 9.0, "slice_min_bytes": 0, "render_dpi": 200, "worker_id": "other",
    "kafka_bootstrap_servers": "elsewhere:9092", "model_cache_dir": "/tmp/elsewhere", "metrics_interval_s": 3.0,
}


@pytest.mark.parametrize("name", list(SHAPING))
def test_every_output_shaping_setting_moves_the_fingerprint(name):
    base = base_settings(engine="openvino")  # "onnxruntime" below must be another runtime
    assert rc.fingerprint_digest(base) != rc.fingerprint_digest(base_settings(**{"engine": "openvino",
                                                                                 name: SHAPING[name]}))


def test_speed_settings_and_the_device_index_leave_it_alone():
    base = base_settings()
    assert all(rc.fingerprint_digest(base) == rc.fingerprint_digest(base_settings(**{k: v}))
               for k, v in NEUTRAL.items()), [k for k, v in NEUTRAL.items()
                                              if rc.fingerprint_digest(base) != rc.fingerprint_digest(base_settings(**{k: v}))]
    cuda = base_settings(engine="onnxruntime", engine_device="cuda:0")
    assert rc.fingerprint_digest(cuda) == rc.fingerprint_digest(cuda.model_copy(update={"engine_device": "cuda:1"}))
    # on a GPU the engine's automatic detection batch is the micro-batch: there it counts
    assert rc.fingerprint_digest(cuda) != rc.fingerprint_digest(cuda.model_copy(update={"batch_max_pages": 3}))


def test_profile_models_and_versions_are_in_the_fingerprint(tmp_path):
    s = base_settings(engine="onnxruntime")
    assert rc.fingerprint_digest(s, "default") != rc.fingerprint_digest(s, "paddle-v4")
    fp = rc.output_fingerprint(s)
    assert fp["packages"]["onnxruntime"] and "rapidocr" in fp["packages"] and "openvino" not in fp["packages"]
    assert {"paddlepaddle", "paddleocr"} <= set(rc.output_fingerprint(base_settings(engine="paddle"))["packages"])
    assert len(fp["code"]) == 64 and fp["models"]["dir"] is None
    (tmp_path / "det.onnx").write_bytes(b"det model")
    (tmp_path / "rec.onnx").write_bytes(b"rec model")
    with_dir = s.model_copy(update={"model_dir": tmp_path})
    before = rc.fingerprint_digest(with_dir)
    assert before != rc.fingerprint_digest(s)
    (tmp_path / "rec.onnx").write_bytes(b"another rec model")  # same names, other weights
    assert rc.fingerprint_digest(with_dir) != before


def test_request_digest_and_key():
    base = dict(tenant=None, content_sha256=rc.content_digest(b"bytes"), dpi=150, page_range=None)
    digest = rc.request_digest(**base)
    assert len(digest) == 64 and digest == rc.request_digest(**dict(reversed(list(base.items()))))
    for change in ({"tenant": "acme"}, {"content_sha256": rc.content_digest(b"bytez")}, {"dpi": 200},
                   {"dpi": None}, {"page_range": "1"}):
        assert rc.request_digest(**{**base, **change}) != digest, change
    fp = "a" * 64
    assert rc.cache_key(digest, fp) != rc.cache_key(digest, "b" * 64) != rc.cache_key(rc.request_digest(
        **{**base, "dpi": 72}), "b" * 64)


def test_topic_retention_is_the_ttl_and_zero_turns_the_cache_off():
    def spec(s):
        return next(t for t in topic_specs(retention=s.retention()) if t.name == "result-cache").config

    assert spec(base_settings(result_cache_ttl_h=2))["retention.ms"] == str(2 * 3600 * 1000)
    assert spec(base_settings(result_cache_ttl_h=2))["segment.ms"] == str(2 * 3600 * 1000)
    week = base_settings(result_cache_ttl_h=168)
    assert spec(week)["cleanup.policy"] == "compact,delete" and spec(week)["segment.ms"] == str(24 * 3600 * 1000)
    assert spec(week)["retention.ms"] == str(7 * 24 * 3600 * 1000) and rc.enabled(week)
    off = base_settings(result_cache_ttl_h=0)
    assert not rc.enabled(off) and spec(off)["retention.ms"] == str(3600 * 1000)
    assert Settings.model_fields["result_cache_ttl_h"].default == 168.0  # on by default (the tests turn it off)


def test_the_worker_keys_a_page_with_its_own_fingerprint():
    """The key on a page result names the worker's configuration, whatever the splitter thought."""
    request = rc.request_digest(tenant=None, content_sha256=rc.content_digest(b"x"), dpi=150, page_range=None)
    task = PageTask(document_id="d", source=ObjectRef(bucket="bkt", key="k", filename="k"), page_number=1,
                    page_count=1, kind="pdf", dpi=150, submitted_at=1, cache_request=request)
    keys = {}
    for thresh in (0.5, 0.45):
        s = base_settings(det_box_thresh=thresh)
        item = WorkItem(msg=None, received=0.0, task=task, shape=(10, 10))
        out = page_result(s, item, PageOcr(lines=[]), EngineInfo(name="none"), WorkerStats())
        keys[thresh] = decode(out.value, PageResult).cache_key
        assert keys[thresh] == rc.cache_key(request, rc.fingerprint_digest(s))
    assert keys[0.5] != keys[0.45]
    plain = page_result(base_settings(), WorkItem(msg=None, received=0.0, task=task.model_copy(
        update={"cache_request": None}), shape=(10, 10)), PageOcr(lines=[]), EngineInfo(name="none"), WorkerStats())
    assert decode(plain.value, PageResult).cache_key is None  # no request: nothing to cache


def test_the_splitter_trusts_only_a_fingerprint_every_live_worker_reports():
    def sample(worker, fp, at, interval_s=10.0, **extra):
        return WorkerMetrics(host="h", worker_id=worker, stage="worker", at=at, interval_s=interval_s, cpu_pct=0,
                             rss_bytes=0, pages=0, batches=0, mean_batch_size=0, pages_per_s=0,
                             batch_latency_ms_p50=None, batch_latency_ms_p95=None, output_fingerprint=fp, **extra)

    a, b, now = "a" * 64, "b" * 64, 1_000_000
    w = WorkerFingerprints()
    assert w.current(now_ms=now) is None  # nobody reported
    w.add(sample("w1", a, now - 1000))
    w.add(sample("w2", a, now - 5000))
    assert w.current(now_ms=now) == a
    w.add(sample("w3", b, now - 2000))  # a fleet half way through a change
    assert w.current(now_ms=now) is None
    w.add(sample("w3", a, now - 500))  # restarted with the others' configuration
    w.add(sample("w3", b, now - 3000))  # an older sample arriving late changes nothing
    assert w.current(now_ms=now) == a
    assert w.current(now_ms=now + 31_000) is None  # all older than 3 of their 10-s intervals: none live
    w.add(sample("w4", None, now))  # a worker that predates the cache
    assert w.current(now_ms=now) is None
    assert w.current("paddle", now_ms=now) is None  # no worker serves that profile


def test_no_cache_is_a_flag_of_submit_and_another_document_id():
    assert build_parser().parse_args(["submit", "--no-cache", "a.pdf"]).no_cache is True
    assert build_parser().parse_args(["submit", "a.pdf"]).no_cache is False
    assert stable_document_id("b", "k", "e", no_cache=True) != stable_document_id("b", "k", "e")
    assert stable_document_id("b", "k", "e", no_cache=False) == stable_document_id("b", "k", "e")


# --------------------------------------------------------------------------- the real stack


class SerialEngine:
    """Numbers every page it reads: the n-th page's one line says ``READING n``."""

    def __init__(self) -> None:
        self.info = EngineInfo(name="serial-test", device="cpu", version="1")
        self.pages = 0
        self._lock = threading.Lock()

    def ocr_batch(self, images):
        out = []
        for image in images:
            with self._lock:
                self.pages += 1
                n = self.pages
            h, w = image.shape[:2]
            out.append(PageOcr(lines=[TextLine(f"READING {n}", [[1, 1], [w - 1, 1], [w - 1, 20], [1, 20]], 0.99)],
                               timings_ms={"det_ms": 1.0, "rec_ms": 1.0}))
        return out


class Pipeline:
    """Splitter, worker and assembler of one namespace in threads; :meth:`restart` replaces some
    with other settings. ``s`` is the namespace's settings, ``engine`` the worker's engine."""

    def __init__(self, s, engine: SerialEngine):
        self.s, self.engine, self.runner = s, engine, StageThreads()
        self.stages: dict[str, object] = {}
        self.settings: dict[str, object] = {}
        for name in ("splitter", "worker", "assembler"):
            self._start(name, s)

    def _start(self, name: str, s) -> None:
        stop = StopFlag(install_signals=False)
        stage = {"splitter": lambda: Splitter(s, stop), "worker": lambda: OcrWorker(s, engine=self.engine, stop=stop),
                 "assembler": lambda: Assembler(s, stop)}[name]()
        self.stages[name], self.settings[name] = self.runner.start(stage), s

    def restart(self, names: tuple[str, ...], **overrides) -> None:
        for name in names:
            self.runner.stop(self.stages[name])
        for name in names:
            self._start(name, self.s.model_copy(update=overrides))

    @property
    def index(self):
        return self.stages["splitter"].cache

    def wait_workers_known(self) -> None:
        """Until the splitter uses the running worker's fingerprint for its lookups."""
        want = rc.fingerprint_digest(self.settings["worker"])
        _wait(lambda: self.index.workers.current() == want, 60, "the splitter learning the worker's fingerprint")


@pytest.fixture(scope="module")
def pipeline(stack):
    from test_gateway import _drop_topics, _namespace  # the gateway tests' namespace: tenants, API keys

    s = _namespace(uuid.uuid4().hex[:8], delivery="exactly-once", metrics_interval_s=1.0, result_cache_ttl_h=168.0)
    p = Pipeline(s, SerialEngine())
    yield p
    p.runner.stop_all()
    assert not p.runner.errors, f"stage threads raised: {p.runner.errors}"
    _drop_topics(s)


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)


def _ends(s, logical: str) -> int:
    """Sum of the high watermarks of a topic's partitions (records and transaction markers)."""
    topic = s.topic(logical)
    c = Consumer(consumer_config(s, f"{s.group('test')}-{uuid.uuid4().hex[:6]}"))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def _texts(result) -> list[str]:
    return [" ".join(d.text for d in p.detections) for p in result.pages]


def _readings(result) -> list[int]:
    """The engine's page numbers in a result's text (``READING n`` per page)."""
    return [int(t.split()[-1]) for t in _texts(result)]


def _publish(s, keys_and_options: list[tuple[str, dict]]) -> dict[str, str]:
    """Publish references to stored objects; ``{object key: document id}``."""
    with DocumentPublisher(s) as pub:
        return {key: pub.publish_object(s.bucket, key, **opts) for key, opts in keys_and_options}


def _results(s, ids, timeout_s: float = WAIT_S) -> dict:
    """Results of ``ids`` from the start of ``s``'s results topic."""
    follower = ResultFollower(s, start="beginning")
    try:
        return follower.wait_for(ids, timeout_s=timeout_s)
    finally:
        follower.close()


@pytest.mark.integration
def test_a_repeated_document_is_a_cache_hit_without_an_engine_call(pipeline, tmp_path):
    p, s = pipeline, pipeline.s
    store = ObjectStore(s)
    data = make_pdf([["RESULT CACHE PAGE ONE"], ["RESULT CACHE PAGE TWO"]])
    for key in ("uploads/first.pdf", "uploads/second.pdf", "uploads/third.pdf", "uploads/fourth.pdf",
                "uploads/fifth.pdf", "tenants/acme/copy.pdf", "tenants/acme/again.pdf"):
        store.put_bytes(key, data, "application/pdf")
    acme = s.model_copy(update={"tenant": "acme"})
    p.wait_workers_known()

    # First sight: OCR'd, stored under the key every page agreed on.
    a = _publish(s, [("uploads/first.pdf", {})])["uploads/first.pdf"]
    first = _results(s, [a])[a]
    assert first.status == "succeeded", first.error
    assert first.cache_hit is None and first.cached_from is None and len(first.cache_key) == 64
    assert len(set(_readings(first))) == 2
    key = first.cache_key
    _wait(lambda: p.index.get(key) is not None, 30, "the splitter's index reading the entry")

    # Same bytes under another name: the stored pages, nothing sent to OCR.
    before = (p.engine.pages, _ends(s, "pages"), _ends(s, "page-results"))
    b = _publish(s, [("uploads/second.pdf", {})])["uploads/second.pdf"]
    hit = _results(s, [b])[b]
    assert hit.status == "succeeded" and hit.cache_hit is True and hit.cached_from == a and hit.cache_key == key
    assert hit.document_id == b and hit.source.key == "uploads/second.pdf" and hit.source.size == len(data)
    assert _texts(hit) == _texts(first) and [pg.page_number for pg in hit.pages] == [1, 2]
    assert hit.engine == first.engine and hit.page_count == 2
    assert hit.submitted_at > first.completed_at and set(hit.timings_ms) == {"cache_ms", "end_to_end_ms"}
    assert all(pg.timings_ms == {} for pg in hit.pages)  # no download, render or OCR time of its own
    assert (p.engine.pages, _ends(s, "pages"), _ends(s, "page-results")) == before, \
        "a cache hit sent page tasks or produced page results"

    # Everything else that shapes the output: each its own document, OCR'd.
    ids = _publish(s, [("uploads/third.pdf", {"dpi": 200}), ("uploads/fourth.pdf", {"pages": "2"})])
    with DocumentPublisher(acme) as pub:
        other_tenant = pub.publish_object(s.bucket, "tenants/acme/copy.pdf")
    fresh = tmp_path / "fresh.pdf"
    fresh.write_bytes(data)
    out = io.StringIO()  # `ocrstream submit --no-cache --wait --json fresh.pdf`, in process
    assert submit_files(s, [fresh], wait=True, as_json=True, timeout_s=WAIT_S, no_cache=True, out=out) == 0
    no_cache = decode(out.getvalue().encode(), type(first))
    dpi, pages = (_results(s, ids.values())[ids[k]] for k in ("uploads/third.pdf", "uploads/fourth.pdf"))
    tenant = _results(acme, [other_tenant])[other_tenant]
    misses = {"dpi": dpi, "pages": pages, "tenant": tenant, "no_cache": no_cache}
    for why, r in misses.items():
        assert r.status == "succeeded" and r.cache_hit is None, (why, r.cache_hit, r.error)
        assert min(_readings(r)) > before[0], f"{why}: pages not OCR'd again"
    assert [pg.dpi for pg in dpi.pages] == [200, 200] and [pg.page_number for pg in pages.pages] == [2]
    assert len({key, dpi.cache_key, pages.cache_key, tenant.cache_key}) == 4
    assert no_cache.cache_key == key  # OCR'd anyway, and stored: the entry now holds these pages
    assert p.engine.pages == before[0] + 2 + 1 + 2 + 2

    # The refreshed entry is what the next copy gets; the tenant's own copy hits its own entry only.
    _wait(lambda: p.index.get(tenant.cache_key) is not None and _entry_from(p, key) == no_cache.document_id, 30,
          "the index reading the refreshed entry")
    again = _publish(s, [("uploads/fifth.pdf", {})])["uploads/fifth.pdf"]
    with DocumentPublisher(acme) as pub:
        tenant_again = pub.publish_object(s.bucket, "tenants/acme/again.pdf")
    refreshed = _results(s, [again])[again]
    tenant_hit = _results(acme, [tenant_again])[tenant_again]
    assert refreshed.cache_hit and refreshed.cached_from == no_cache.document_id
    assert _texts(refreshed) == _texts(no_cache) != _texts(first)
    assert tenant_hit.cache_hit and tenant_hit.cached_from == other_tenant and _texts(tenant_hit) == _texts(tenant)

    # A deletion request takes the cached pages with it: the next copy is OCR'd.
    assert [d.found for d in delete_documents(s, [again])] == [True]
    _wait(lambda: p.index.get(key) is None, 30, "the index reading the cache tombstone")
    store.put_bytes("uploads/sixth.pdf", data, "application/pdf")
    sixth = _publish(s, [("uploads/sixth.pdf", {})])["uploads/sixth.pdf"]
    after_delete = _results(s, [sixth])[sixth]
    assert after_delete.cache_hit is None and min(_readings(after_delete)) > max(_readings(no_cache))


def _entry_from(p: Pipeline, key: str) -> str | None:
    """The document whose result the splitter's index entry of ``key`` holds (read by its offset,
    as a hit does, with a consumer of the test's own)."""
    entry = p.index.get(key)
    if entry is None:
        return None
    c = Consumer(consumer_config(p.s, f"{p.s.group('test')}-{uuid.uuid4().hex[:6]}"))
    try:
        c.assign([TopicPartition(p.s.topic("result-cache"), entry.partition, entry.offset)])
        for _ in range(50):  # bounded: 10 s
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                return orjson.loads(msg.value())["result"]["document_id"] if msg.offset() == entry.offset else None
        raise AssertionError(f"cache entry {key[:12]} at offset {entry.offset} not read within 10 s")
    finally:
        c.close()


@pytest.mark.integration
def test_the_gateway_takes_no_cache(pipeline):
    from test_gateway import HEADERS, running_gateway

    p, s = pipeline, pipeline.s
    data = make_pdf([["GATEWAY NO CACHE"]])
    store = ObjectStore(s)
    store.put_bytes("uploads/gw.pdf", data, "application/pdf")
    p.wait_workers_known()
    a = _publish(s, [("uploads/gw.pdf", {})])["uploads/gw.pdf"]
    key = _results(s, [a])[a].cache_key
    _wait(lambda: p.index.get(key) is not None, 30, "the splitter's index reading the entry")
    with running_gateway(s) as client:
        auth, file = HEADERS[None], {"file": ("gw.pdf", data, "application/pdf")}
        assert client.post("/v1/documents", headers=auth, data={"no_cache": "maybe"}, files=file).status_code == 422
        ids = [client.post("/v1/documents", headers=auth, data=form, files=file).json()["document_id"]
               for form in ({"no_cache": "true"}, {})]
        ref = client.post("/v1/documents", headers=auth, json={"bucket": s.bucket, "key": "uploads/gw.pdf",
                                                               "no_cache": True})
        assert ref.status_code == 202 and ref.json()["document_id"] != a  # another document than without it
    results = _results(s, [*ids, ref.json()["document_id"]])
    forced, cached, forced_ref = (results[i] for i in (*ids, ref.json()["document_id"]))
    assert forced.cache_hit is None and forced_ref.cache_hit is None
    assert cached.cache_hit is True and cached.cached_from in {a, forced.document_id, forced_ref.document_id}


@pytest.mark.integration
def test_other_engine_settings_miss_and_the_ttl_0_turns_it_off(pipeline):
    p, s = pipeline, pipeline.s
    store = ObjectStore(s)
    data = make_pdf([["ENGINE SETTINGS CHANGE"]])
    for n in range(1, 6):
        store.put_bytes(f"uploads/e{n}.pdf", data, "application/pdf")
    p.wait_workers_known()
    one = _publish(s, [("uploads/e1.pdf", {})])["uploads/e1.pdf"]
    old = _results(s, [one])[one]
    _wait(lambda: p.index.get(old.cache_key) is not None, 30, "the splitter's index reading the entry")

    # The workers now run with another detection threshold: the entry of the old one is not theirs.
    p.restart(("worker",), det_box_thresh=0.45)
    p.wait_workers_known()
    two = _publish(s, [("uploads/e2.pdf", {})])["uploads/e2.pdf"]
    changed = _results(s, [two])[two]
    assert changed.cache_hit is None and changed.cache_key != old.cache_key
    assert min(_readings(changed)) > max(_readings(old))
    _wait(lambda: p.index.get(changed.cache_key) is not None, 30, "the index reading the new entry")
    three = _publish(s, [("uploads/e3.pdf", {})])["uploads/e3.pdf"]
    hit = _results(s, [three])[three]
    assert hit.cache_hit and hit.cached_from == two  # the new configuration's own entry

    # TTL 0: no lookups and nothing stored.
    p.restart(("splitter", "assembler"), result_cache_ttl_h=0.0)
    entries, engine_pages = _ends(s, "result-cache"), p.engine.pages
    ids = _publish(s, [("uploads/e4.pdf", {}), ("uploads/e5.pdf", {})])
    off = _results(s, ids.values())
    assert all(r.status == "succeeded" and r.cache_hit is None and r.cache_key is None for r in off.values())
    assert p.engine.pages == engine_pages + 2 and _ends(s, "result-cache") == entries
    assert p.index is None
