"""The HTTP gateway (producers/gateway/) against the real broker, S3 server and stages.

Each gateway runs as `ocrstream gateway` would: the FastAPI app on a real uvicorn server
(127.0.0.1, a free port, in a thread), spoken to with a real HTTP client (httpx). The splitter,
OCR worker (real OCR) and assembler run in threads on one set of topics for the whole module,
so the engine loads once. Every wait is bounded and fails the test when it runs out.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from consumers.assembler import Assembler
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.engine import create_engine
from ocrstream.kafka import consumer_config, make_admin, producer_config
from ocrstream.storage import ObjectStore
from ocrstream.streaming import StopFlag
from producers.gateway import create_app
from producers.publish import stable_document_id
from schemas import DocumentOptions
from topology import apply_topics, topic_specs

from conftest import REPO, StageThreads, base_settings, make_pdf, settings_env, wait_ready

pytestmark = pytest.mark.integration

KEYS = {None: "key-default", "acme": "key-acme", "globex": "key-globex"}
HEADERS = {t: {"Authorization": f"Bearer {k}"} for t, k in KEYS.items()}
LIMIT = 200_000  # OCRSTREAM_GATEWAY_MAX_UPLOAD_BYTES of these gateways


def _namespace(tag: str, **overrides):
    """Settings for a fresh topic/group namespace with tenants acme and globex, topics applied."""
    bucket = f"gw-{tag}"
    values = dict(topic_prefix=f"t{tag}.", group_prefix=f"g{tag}.", bucket=bucket, worker_id=f"w-{tag}",
                  tenants={"acme": f"{bucket}/tenants/acme/", "globex": f"{bucket}/tenants/globex/"},
                  gateway_api_keys=",".join(f"{k}={t or '-'}" for t, k in KEYS.items()),
                  gateway_max_upload_bytes=LIMIT, gateway_quota_per_minute=0, gateway_max_backlog_pages=0)
    s = base_settings(**{**values, **overrides})
    apply_topics(make_admin(s), topic_specs(tenants=tuple(s.tenants)), s.topic_prefix)
    ObjectStore(s).ensure_bucket()
    return s


def _drop_topics(s) -> None:
    admin = make_admin(s)
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(s.topic_prefix)]
    for future in (admin.delete_topics(mine, operation_timeout=30).values() if mine else []):
        with contextlib.suppress(Exception):
            future.result(30)


@contextlib.contextmanager
def running_gateway(s, ready_timeout_s: float = 30.0):
    """A gateway for ``s`` on a real uvicorn server; yields an httpx client on its URL once
    ``/readyz`` answers 200."""
    import uvicorn

    app = create_app(s)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}", timeout=30) as client:
            wait_ready(client, ready_timeout_s, every_s=0.1)
            yield client
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def pipeline(stack):
    """One namespace with the splitter, an OCR worker and the assembler running in threads."""
    s = _namespace(uuid.uuid4().hex[:8])
    runner = StageThreads()
    runner.start(Splitter(s, StopFlag(install_signals=False)))
    runner.start(OcrWorker(s, engine=create_engine(s), stop=StopFlag(install_signals=False)))
    runner.start(Assembler(s, StopFlag(install_signals=False)))
    yield s
    runner.stop_all()
    assert not runner.errors, f"stage threads raised: {runner.errors}"
    runner.running.clear()  # the stages' admin clients (no close()) go with their last reference
    _drop_topics(s)


@pytest.fixture(scope="module")
def gateway(pipeline):
    """The gateway of the pipeline's namespace (no quota, no backlog limit)."""
    with running_gateway(pipeline) as client:
        yield client


def _wait_done(client: httpx.Client, document_id: str, tenant: str | None, timeout_s: float = 60.0) -> dict:
    """Poll GET /v1/documents/{id} until its status is not pending."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = client.get(f"/v1/documents/{document_id}", headers=HEADERS[tenant])
        assert r.status_code == 200, r.text
        if r.json()["status"] != "pending":
            return r.json()
        time.sleep(0.2)
    pytest.fail(f"document {document_id} still pending after {timeout_s}s")


def _upload(client, tenant, name: str, content: bytes, **kw) -> httpx.Response:
    return client.post("/v1/documents", headers=HEADERS[tenant], files={"file": (name, content, "application/pdf")},
                       **kw)


@pytest.fixture(scope="module")
def acme_doc(pipeline, gateway):
    """A document of tenant acme, submitted by reference and finished: (document_id, key)."""
    key = "tenants/acme/letter.pdf"
    ObjectStore(pipeline).put_bytes(key, make_pdf([["ACME LETTER 77"]], size=(420, 160), fontsize=26),
                                    "application/pdf")
    r = gateway.post("/v1/documents", headers=HEADERS["acme"], json={"bucket": pipeline.bucket, "key": key})
    assert r.status_code == 202, r.text
    doc_id = r.json()["document_id"]
    assert _wait_done(gateway, doc_id, "acme")["status"] == "succeeded"
    return doc_id, key


def test_upload_is_accepted_pending_then_its_ocr_text_and_layouts_are_served(pipeline, gateway):
    r = _upload(gateway, None, "hello.pdf", make_pdf([["GATEWAY HELLO 42"]], size=(420, 160), fontsize=26))
    assert r.status_code == 202, r.text
    doc_id = r.json()["document_id"]
    assert r.headers["location"] == f"/v1/documents/{doc_id}"
    # Accepted by this gateway, not OCR'd yet (the pipeline needs far more than one round trip).
    assert gateway.get(r.headers["location"], headers=HEADERS[None]).json() == {"document_id": doc_id,
                                                                               "status": "pending"}
    assert gateway.get(f"/v1/documents/{doc_id}/text", headers=HEADERS[None]).status_code == 409
    body = _wait_done(gateway, doc_id, None)
    assert body["status"] == "succeeded" and body["page_count"] == 1 and body["error"] is None
    # The reference on the topic named the upload in the store, not its bytes.
    src = body["result"]["source"]
    assert (src["bucket"], src["key"]) == (pipeline.bucket, f"{pipeline.upload_prefix}{doc_id}/hello.pdf")
    assert ObjectStore(pipeline).stat(src["bucket"], src["key"]).size == src["size"]

    text = gateway.get(f"/v1/documents/{doc_id}/text", headers=HEADERS[None])
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    assert re.sub(r"\s+", " ", text.text).strip() == "GATEWAY HELLO 42"  # real OCR, through the whole pipeline
    hocr = gateway.get(f"/v1/documents/{doc_id}/hocr", headers=HEADERS[None])
    assert hocr.status_code == 200 and 'class="ocr_line"' in hocr.text and "HELLO" in hocr.text
    alto = gateway.get(f"/v1/documents/{doc_id}/alto", headers=HEADERS[None])
    assert alto.status_code == 200 and "<TextLine" in alto.text and "HELLO" in alto.text
    js = gateway.get(f"/v1/documents/{doc_id}/json", headers=HEADERS[None])
    assert js.status_code == 200 and js.json()["document_id"] == doc_id and js.json()["schema"] == "document_result"


def test_json_reference_and_a_restarted_gateway_reads_the_result_back_from_the_topic(pipeline, gateway, acme_doc):
    doc_id, key = acme_doc
    etag = ObjectStore(pipeline).stat(pipeline.bucket, key).etag
    assert doc_id == stable_document_id(pipeline.bucket, key, etag, None, DocumentOptions(), "acme")
    text = gateway.get(f"/v1/documents/{doc_id}/text", headers=HEADERS["acme"]).text
    assert re.sub(r"\s+", " ", text).strip() == "ACME LETTER 77"
    # Submitting the same object version again is the same document: its result is there at once.
    again = gateway.post("/v1/documents", headers={"X-API-Key": KEYS["acme"]}, json={"bucket": pipeline.bucket,
                                                                                     "key": key})
    assert again.status_code == 202 and again.json()["document_id"] == doc_id
    assert gateway.get(f"/v1/documents/{doc_id}", headers=HEADERS["acme"]).json()["status"] == "succeeded"
    # A new gateway process knows nothing it accepted: once ready (its table caught up with the
    # results topic's end), it serves the result from the topic. A 1-byte cache holds no result,
    # so this reads it by its indexed offset.
    with running_gateway(pipeline.model_copy(update={"gateway_results_cache_bytes": 1})) as fresh:
        assert fresh.get("/readyz").json() == {"broker": True, "results_caught_up": True}
        body = fresh.get(f"/v1/documents/{doc_id}", headers=HEADERS["acme"]).json()
        assert body["status"] == "succeeded" and body["result"]["document_id"] == doc_id
        assert "ACME LETTER 77" in fresh.get(f"/v1/documents/{doc_id}/text", headers=HEADERS["acme"]).text


def test_unknown_document_is_404_and_keys_are_required(gateway, acme_doc):
    doc_id, _ = acme_doc
    r = gateway.get("/v1/documents/no-such-document", headers=HEADERS["acme"])
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": KEYS["acme"]}):
        for method, path, kw in (("GET", f"/v1/documents/{doc_id}", {}), ("GET", f"/v1/documents/{doc_id}/text", {}),
                                 ("POST", "/v1/documents", {"json": {"bucket": "b", "key": "k"}})):
            r = gateway.request(method, path, headers=headers, **kw)
            assert r.status_code == 401, (headers, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"


def test_a_tenant_cannot_read_another_tenants_document(gateway, acme_doc):
    doc_id, _ = acme_doc
    assert gateway.get(f"/v1/documents/{doc_id}", headers=HEADERS["acme"]).status_code == 200
    for other in ("globex", None):
        for suffix in ("", "/text", "/hocr", "/alto", "/json"):
            r = gateway.get(f"/v1/documents/{doc_id}{suffix}", headers=HEADERS[other])
            assert r.status_code == 404, (other, suffix, r.text)  # not even whether it exists


def test_oversize_upload_is_413(pipeline, gateway):
    before = ObjectStore(pipeline).list(pipeline.upload_prefix)
    # Within the body cap (limit + multipart framing) but over the file limit by one byte: read, then refused.
    r = _upload(gateway, None, "big.pdf", b"%PDF-1.7\n" + b"0" * (LIMIT - 8))
    assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
    # Far over: refused from its Content-Length, unread.
    r = _upload(gateway, None, "huge.pdf", b"%PDF-1.7\n" + b"0" * (3 * LIMIT))
    assert r.status_code == 413, r.text
    # Streamed without a length (chunked): cut off while it is read.
    r = gateway.post("/v1/documents", headers={**HEADERS[None], "Content-Type": "application/json"},
                     content=iter([b" " * 100_000] * 4))
    assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
    assert ObjectStore(pipeline).list(pipeline.upload_prefix) == before  # nothing was stored


def test_reference_outside_the_tenants_sources_is_403_and_not_read(pipeline, gateway):
    store = ObjectStore(pipeline)
    store.put_bytes("tenants/globex/secret.pdf", make_pdf([["GLOBEX SECRET"]]), "application/pdf")
    for tenant, bucket, key in (("acme", pipeline.bucket, "tenants/globex/secret.pdf"),  # another tenant's folder
                                (None, pipeline.bucket, "tenants/globex/secret.pdf"),  # the default tenant's rules
                                ("acme", "some-other-bucket", "tenants/acme/x.pdf")):
        r = gateway.post("/v1/documents", headers=HEADERS[tenant], json={"bucket": bucket, "key": key})
        assert r.status_code == 403 and r.json()["code"] == "forbidden_source", (tenant, key, r.text)
    r = gateway.post("/v1/documents", headers=HEADERS["acme"], json={"bucket": pipeline.bucket,
                                                                     "key": "tenants/acme/../globex/secret.pdf"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_key"
    r = gateway.post("/v1/documents", headers=HEADERS["acme"], json={"bucket": pipeline.bucket,
                                                                     "key": "tenants/acme/missing.pdf"})
    assert r.status_code == 422 and r.json()["code"] == "object_not_found"


def test_malformed_submissions_are_422_or_415(pipeline, gateway):
    h = HEADERS[None]
    for body in ({"bucket": pipeline.bucket}, {"bucket": pipeline.bucket, "key": "uploads/a.pdf", "extra": 1},
                 {"bucket": pipeline.bucket, "key": "uploads/a.pdf", "dpi": 5000}):
        r = gateway.post("/v1/documents", headers=h, json=body)
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", (body, r.text)
    assert gateway.post("/v1/documents", headers={**h, "Content-Type": "application/json"},
                        content=b"{not json").status_code == 422
    r = _upload(gateway, None, "a.pdf", make_pdf([["A"]]), data={"dpi": "20"})
    assert r.status_code == 422 and "dpi" in r.json()["detail"]
    r = gateway.post("/v1/documents", headers=h, files={"other": ("a.pdf", b"%PDF-1.7", "application/pdf")})
    assert r.status_code == 422 and "file" in r.json()["detail"]
    r = gateway.post("/v1/documents", headers={**h, "Content-Type": "text/plain"}, content=b"x")
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"


def test_quota_exceeded_is_429_with_retry_after_per_tenant(pipeline, gateway, acme_doc):
    _, key = acme_doc
    with running_gateway(pipeline.model_copy(update={"gateway_quota_per_minute": 2})) as limited:
        ref = {"bucket": pipeline.bucket, "key": key}
        assert [limited.post("/v1/documents", headers=HEADERS["acme"], json=ref).status_code
                for _ in range(2)] == [202, 202]
        r = limited.post("/v1/documents", headers=HEADERS["acme"], json=ref)
        assert r.status_code == 429 and r.json()["code"] == "quota", r.text
        assert 1 <= int(r.headers["retry-after"]) <= 30  # one token comes back every 30 s at 2 a minute
        # Refused requests cost no quota, and other tenants have their own.
        assert limited.post("/v1/documents", headers=HEADERS["globex"], json=ref).status_code == 403
        r = _upload(limited, "globex", "g.pdf", make_pdf([["G"]]))
        assert r.status_code == 202, r.text
        assert _upload(limited, "globex", "g.pdf", make_pdf([["G"]])).status_code == 202
        assert _upload(limited, "globex", "g.pdf", make_pdf([["G"]])).status_code == 429


def test_page_backlog_over_the_limit_is_429(stack):
    # Its own namespace, with no workers: the backlog is exactly what this test puts there.
    s = _namespace(uuid.uuid4().hex[:8], gateway_max_backlog_pages=2, gateway_backlog_cache_s=0.2)
    try:
        p = Producer(producer_config(s))
        for i in range(3):
            p.produce(s.topic("pages"), b"{}", b"k", partition=0)
        assert p.flush(30) == 0
        with running_gateway(s) as gw:
            r = _upload(gw, None, "a.pdf", make_pdf([["A"]]))
            assert r.status_code == 429 and r.json()["code"] == "backlog", r.text  # nothing committed: lag 3
            assert r.headers["retry-after"] == "1"
            # The workers' group commits one of the three: lag 2, not over the limit.
            c = Consumer(consumer_config(s, s.group("worker")))
            c.commit(offsets=[TopicPartition(s.topic("pages"), 0, 1)], asynchronous=False)
            c.close()
            deadline = time.monotonic() + 10
            while (r := _upload(gw, None, "a.pdf", make_pdf([["A"]]))).status_code == 429:
                assert time.monotonic() < deadline, "backlog still over the limit after the commit"
                time.sleep(0.2)
            assert r.status_code == 202, r.text
            assert 'ocrstream_gateway_page_backlog{lane="batch",profile="default"} 2.0' in gw.get("/metrics").text
    finally:
        _drop_topics(s)


def test_probes_metrics_and_openapi(gateway):
    assert gateway.get("/healthz").json() == {"status": "ok"}
    assert gateway.get("/readyz").json() == {"broker": True, "results_caught_up": True}
    metrics = gateway.get("/metrics").text
    assert 'ocrstream_gateway_requests_total{code="202",route="/v1/documents"}' in metrics
    assert 'ocrstream_gateway_documents_total{kind="upload",tenant="default"}' in metrics
    spec = gateway.get("/openapi.json").json()
    assert set(spec["paths"]) >= {"/v1/documents", "/v1/documents/{document_id}", "/v1/documents/{document_id}/text",
                                  "/v1/documents/{document_id}/hocr", "/v1/documents/{document_id}/alto",
                                  "/v1/documents/{document_id}/json"}
    assert set(spec["paths"]["/v1/documents"]["post"]["requestBody"]["content"]) == {"multipart/form-data",
                                                                                     "application/json"}


def test_the_command_serves_until_sigterm_and_refuses_to_start_without_keys(pipeline, tmp_path):
    run = [sys.executable, "-m", "ocrstream.cli", "gateway"]
    proc = subprocess.run(run, env=settings_env(pipeline, OCRSTREAM_GATEWAY_API_KEYS=""), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 10 and "OCRSTREAM_GATEWAY_API_KEYS is empty" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run(run, env=settings_env(pipeline, OCRSTREAM_GATEWAY_API_KEYS="sekrit=nobody"), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 10 and "'nobody' is not in OCRSTREAM_TENANTS" in proc.stderr, proc.stderr
    assert "sekrit" not in proc.stderr

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path / "gateway.log", "wb")
    server = subprocess.Popen(run, env=settings_env(pipeline, OCRSTREAM_GATEWAY_HOST="127.0.0.1",
                                                    OCRSTREAM_GATEWAY_PORT=str(port)),
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_ready(client, 30, died=lambda: server.poll() is not None
                       and (tmp_path / "gateway.log").read_text()[-2000:])
            assert client.get("/v1/documents/x", headers=HEADERS["globex"]).status_code == 404
            assert client.get("/v1/documents/x").status_code == 401
        server.send_signal(signal.SIGTERM)
        assert server.wait(20) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        log.close()
