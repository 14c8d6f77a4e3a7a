"""Completion webhooks (ocrstream/webhooks.py, consumers/webhooks.py) against real HTTP receivers
and the real broker, S3 server and stages.

The receivers are ``http.server`` servers on 127.0.0.1 in threads, each answering a scripted
status per path and recording every call (headers and raw body), so signatures are checked the
way a receiver would check them: with ``hmac`` over the bytes that arrived. The splitter, an OCR
worker (``OCRSTREAM_ENGINE=none``: the OCR is not what is tested), the assembler and the webhooks
stage run in threads on one namespace with tenants acme and globex for the whole module. Records
the webhooks stage should call or refuse are either real documents through the pipeline or
document results produced onto a results topic (crafted: forged or old records, receivers that
fail). Every wait is bounded and fails the test when it runs out; "not called" is asserted only
after a later record on the same partition was called (records of a partition are handled in
order). Retries are fast here (3 calls, waits up to 0.2 s).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import subprocess
import sys
import threading
import time
import uuid

import orjson
import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from consumers.assembler import Assembler
from consumers.splitter import Splitter
from consumers.webhooks import WebhookStage, _Interrupted, retry_after_s, settings_problems
from consumers.worker import OcrWorker
from ocrstream.engine import create_engine
from ocrstream.errors import OcrstreamError
from ocrstream.kafka import make_admin, producer_config
from ocrstream.settings import Settings
from ocrstream.storage import ObjectStore
from ocrstream.streaming import StopFlag
from ocrstream.webhooks import (check_webhook_url, delivery_id, parse_host_rules, signature, summary,
                                verify_signature)
from producers.publish import DocumentPublisher, now_ms, stable_document_id
from schemas import Detection, DocumentOptions, DocumentRef, DocumentResult, Error, ObjectRef, Page, decode, encode
from topology import apply_topics, topic_specs

from conftest import (REPO, StageThreads, base_settings, committed_to_end, consume_all, make_pdf, read_topic,
                      settings_env)

SECRETS = {None: "sec-default-7f", "acme": "sec-acme-31", "globex": "sec-globex-c4"}
FAST = dict(webhook_attempts=3, webhook_retry_base_s=0.05, webhook_retry_max_s=0.2, webhook_max_elapsed_s=10,
            webhook_timeout_s=5, webhook_host_cooldown_s=0)


# --------------------------------------------------------------------------- receivers


class Receiver:
    """An HTTP server on 127.0.0.1 (a free port) that records every POST and answers each path
    with its scripted statuses in turn (then 200)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.script: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.calls.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                           "at": time.monotonic()})
                    statuses = receiver.script.get(self.path) or []
                    status = statuses.pop(0) if statuses else 200
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):  # quiet
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name=f"receiver-{self.port}")
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]

    def wait(self, path: str, n: int = 1, timeout_s: float = 90.0) -> list[dict]:
        """The calls of ``path`` once there are ``n``; fails the test after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while len(calls := self.on(path)) < n:
            if time.monotonic() > deadline:
                pytest.fail(f"{len(calls)} of {n} calls of {path} within {timeout_s}s")
            time.sleep(0.05)
        return calls

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verified(call: dict, secret: str) -> dict:
    """The JSON body of ``call`` after checking its signature as the README tells receivers to:
    HMAC-SHA256 over ``"<t>." + raw body`` with the tenant's secret, ``t`` recent."""
    fields = dict(part.split("=", 1) for part in call["headers"]["X-Ocrstream-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + call["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"]), "signature does not verify with the tenant's secret"
    assert abs(time.time() - int(fields["t"])) < 300
    assert call["headers"]["Content-Type"] == "application/json"
    assert call["headers"]["X-Ocrstream-Event"] == "document.completed"
    return orjson.loads(call["body"])


def signed_by(call: dict, secret: str) -> bool:
    fields = dict(part.split("=", 1) for part in call["headers"]["X-Ocrstream-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + call["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


# --------------------------------------------------------------------------- unit: checks and signing


def _settings(**kw) -> Settings:
    base = dict(tenants={"acme": "b/acme/", "globex": "b/globex/"},
                webhook_allowed_hosts={"-": "hooks.example.com, http://127.0.0.1:8000",
                                       "acme": "acme.example.com:8443, [::1]:9000"})
    return Settings(**{**base, **kw})


@pytest.mark.parametrize("url, tenant, code", [
    ("https://hooks.example.com/cb?token=x", None, None),
    ("https://HOOKS.example.com:443/cb", None, None),            # host names are case-insensitive
    ("http://127.0.0.1:8000/cb", None, None),                     # plain http where the entry says so
    ("https://127.0.0.1:8000/cb", None, "webhook_not_allowed"),   # ... and only plain http there
    ("http://hooks.example.com/cb", None, "webhook_not_allowed"),  # https only unless written http://
    ("https://hooks.example.com:8443/cb", None, "webhook_not_allowed"),  # no port: 443 only
    ("https://a.hooks.example.com/cb", None, "webhook_not_allowed"),     # no subdomains
    ("https://hooks.example.com.evil.org/cb", None, "webhook_not_allowed"),
    ("https://acme.example.com:8443/cb", "acme", None),
    ("https://[::1]:9000/cb", "acme", None),
    ("https://hooks.example.com/cb", "acme", "webhook_not_allowed"),  # another tenant's host
    ("https://acme.example.com:8443/cb", None, "webhook_not_allowed"),
    ("https://hooks.example.com/cb", "globex", "webhook_not_allowed"),  # a tenant without an entry
    ("https://user:pw@hooks.example.com/cb", None, "invalid_webhook_url"),
    ("https://hooks.example.com@evil.org/cb", None, "invalid_webhook_url"),
    ("https://hooks.example.com/cb#frag", None, "invalid_webhook_url"),
    ("https://hooks.example.com/a b", None, "invalid_webhook_url"),
    ("https://hooks.example.com/\u00e9", None, "invalid_webhook_url"),
    ("https://hooks.example.com:99999/", None, "invalid_webhook_url"),
    ("ftp://hooks.example.com/", None, "invalid_webhook_url"),
    ("hooks.example.com/cb", None, "invalid_webhook_url"),
    ("https:///cb", None, "invalid_webhook_url"),
    ("https://hooks.example.com/" + "a" * 2100, None, "invalid_webhook_url"),
])
def test_webhook_urls_are_checked_against_their_own_tenants_hosts(url, tenant, code):
    s = _settings()
    if code is None:
        assert check_webhook_url(s, url, tenant) == url
    else:
        with pytest.raises(OcrstreamError) as e:
            check_webhook_url(s, url, tenant)
        assert e.value.code == code
        assert "token" not in e.value.message and "/cb" not in e.value.message  # paths carry receivers' tokens


def test_webhook_settings_refuse_what_cannot_work():
    assert [str(r) for r in parse_host_rules("A.example.com, http://10.0.0.1, [::1]:9000")] == [
        "a.example.com:443", "http://10.0.0.1:80", "[::1]:9000"]
    for bad in ({"nobody": "a.example.com"}, {"-": "ftp://a.example.com"}, {"-": "a.example.com/path"},
                {"-": "u@a.example.com"}, {"-": "a.example.com:0x1"}):
        with pytest.raises(ValueError):
            _settings(webhook_allowed_hosts=bad)
    for bad in ("acme", "nobody=s3cr3tX", "-=s3cr3tA,-=s3cr3tB", "=s3cr3tC"):
        with pytest.raises(ValueError) as e:
            _settings(webhook_secrets=bad)
        assert "s3cr3t" not in str(e.value)  # a secret is never echoed
    s = _settings(webhook_secrets="-=c2VjcmV0==,acme=x")  # a secret may contain '=' (base64)
    assert s.webhook_secret_of(None) == b"c2VjcmV0==" and s.webhook_secret_of("acme") == b"x"
    assert s.webhook_secret_of("globex") is None
    # what only the webhooks stage needs is checked by the stage, so other stages never fail on it
    ok = dict(webhook_secrets="-=a,acme=b")
    assert settings_problems(_settings(**ok)) == []
    for bad in (dict(webhook_secrets="-=only-default"),                   # acme has hosts, no secret
                dict(ok, webhook_max_elapsed_s=295, webhook_timeout_s=10),  # longer than max.poll.interval.ms
                dict(ok, webhook_timeout_s=200)):                           # one call beyond the liveness timeout
        assert settings_problems(_settings(**bad)), bad
        with pytest.raises(ValueError):
            WebhookStage(_settings(**bad), StopFlag(install_signals=False))


def _result(document_id: str = "d1", **kw) -> DocumentResult:
    det = Detection(text="SECRET TEXT", polygon=[[0, 0], [1, 0], [1, 1], [0, 1]], confidence=0.9)
    values = dict(document_id=document_id, source=ObjectRef(bucket="bkt", key="uploads/d1/a.pdf", filename="a.pdf"),
                  status="succeeded", page_count=2, completed_at=now_ms(), submitted_at=now_ms() - 1500,
                  timings_ms={"det_ms": 10.0, "end_to_end_ms": 1500.0},
                  pages=[Page(page_number=1, width=10, height=10, detections=[det]),
                         Page(page_number=2, status="failed", width=0, height=0,
                              error=Error(code="engine_error", message="boom"))])
    return DocumentResult(**{**values, **kw})


def test_summary_signature_and_delivery_id():
    r = _result(webhook_url="https://hooks.example.com/cb")
    body = summary(r, "dlv", "https://ocr.example.com")
    assert body["document_id"] == "d1" and body["status"] == "succeeded" and body["page_count"] == 2
    assert body["failed_pages"] == [{"page_number": 2, "code": "engine_error"}]
    assert body["source"] == {"bucket": "bkt", "key": "uploads/d1/a.pdf", "filename": "a.pdf", "version_id": None}
    assert body["links"]["text"] == "https://ocr.example.com/v1/documents/d1/text"
    raw = orjson.dumps(body)
    assert b"SECRET TEXT" not in raw and b"detections" not in raw and b"hooks.example.com" not in raw
    header = signature(b"k", 1_800_000_000, raw)
    assert verify_signature(b"k", raw, header, now=1_800_000_100)
    assert not verify_signature(b"k", raw + b" ", header, now=1_800_000_100)   # body changed
    assert not verify_signature(b"other", raw, header, now=1_800_000_100)      # another tenant's secret
    assert not verify_signature(b"k", raw, header, now=1_800_000_400)          # a replay of an old call
    assert not verify_signature(b"k", raw, "v1=abc")
    # the same outcome published again (the assembler's at-least-once re-publication): the same id;
    # another outcome or another topic: another id
    again = r.model_copy(update={"completed_at": r.completed_at + 5000,
                                 "timings_ms": {"det_ms": 10.0, "end_to_end_ms": 6500.0}})
    assert delivery_id("t.document-results", again) == delivery_id("t.document-results", r)
    assert delivery_id("t.document-results", r.model_copy(update={"status": "failed"})) != \
        delivery_id("t.document-results", r)
    assert delivery_id("t.tenant.acme.document-results", r) != delivery_id("t.document-results", r)
    assert retry_after_s("7") == 7.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    assert 0 <= retry_after_s(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))) <= 31


# --------------------------------------------------------------------------- the real stack


@pytest.fixture(scope="module")
def receivers():
    rx, other = Receiver(), Receiver()
    yield rx, other
    rx.close()
    other.close()


@pytest.fixture(scope="module")
def hooked(stack, receivers):
    """A namespace (tenants acme and globex: the default tenant and acme may call ``rx``, globex
    ``other``), with the splitter, an OCR worker (engine none), the assembler and the webhooks
    stage running in threads. Yields ``(settings, runner, webhooks stage)``."""
    rx, other = receivers
    tag = uuid.uuid4().hex[:8]
    bucket = f"wh-{tag}"
    s = base_settings(topic_prefix=f"t{tag}.", group_prefix=f"g{tag}.", bucket=bucket, worker_id=f"w-{tag}",
                      engine="none", tenants={"acme": f"{bucket}/tenants/acme/", "globex": f"{bucket}/tenants/globex/"},
                      webhook_allowed_hosts={"-": f"http://127.0.0.1:{rx.port}", "acme": f"http://127.0.0.1:{rx.port}",
                                             "globex": f"http://127.0.0.1:{other.port}"},
                      webhook_secrets=",".join(f"{t or '-'}={k}" for t, k in SECRETS.items()), **FAST)
    apply_topics(make_admin(s), topic_specs(tenants=tuple(s.tenants)), s.topic_prefix)
    ObjectStore(s).ensure_bucket()
    runner = StageThreads()
    runner.start(Splitter(s, StopFlag(install_signals=False)))
    runner.start(OcrWorker(s, engine=create_engine(s), stop=StopFlag(install_signals=False)))
    runner.start(Assembler(s, StopFlag(install_signals=False)))
    hooks = runner.start(WebhookStage(s, StopFlag(install_signals=False)))
    yield s, runner, hooks
    runner.stop_all()
    assert not runner.errors, f"stage threads raised: {runner.errors}"
    runner.running.clear()
    admin = make_admin(s)
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(s.topic_prefix)]
    for future in (admin.delete_topics(mine, operation_timeout=30).values() if mine else []):
        with contextlib.suppress(Exception):
            future.result(30)


def _produce_result(s: Settings, result: DocumentResult, tenant: str | None = None, partition: int | None = None):
    """A document result produced straight onto ``tenant``'s results topic (as a writer of that topic could)."""
    p = Producer(producer_config(s))
    kwargs = {} if partition is None else {"partition": partition}
    p.produce(s.tenant_topic(tenant, "document-results"), encode(result), result.document_id, **kwargs)
    assert p.flush(30) == 0


def _dead_letter(s: Settings, document_id: str, stage: str, timeout_s: float = 60.0):
    msgs = consume_all(s, s.topic("dead-letters"), 1, timeout_s,
                       key_filter=lambda k: k == document_id.encode())
    from schemas import DeadLetter

    dls = [decode(m.value(), DeadLetter) for m in msgs]
    assert dls[0].stage == stage, dls
    return dls[0]


@pytest.mark.integration
def test_a_document_with_a_webhook_is_called_once_signed_with_its_summary(hooked, receivers, tmp_path):
    s, runner, hooks = hooked
    rx, _ = receivers
    path = tmp_path / "letter.pdf"
    path.write_bytes(make_pdf([["HOOKED 1"], ["HOOKED 2"]], size=(300, 200)))
    with DocumentPublisher(s) as pub:
        doc_id = pub.upload_and_publish(path, webhook_url=rx.url("/once"))
    (call,) = rx.wait("/once")
    body = verified(call, SECRETS[None])
    assert body["document_id"] == doc_id and body["status"] == "succeeded" and body["error"] is None
    assert body["page_count"] == 2 and body["failed_pages"] == []
    assert body["source"]["filename"] == "letter.pdf" and body["source"]["key"].endswith(f"{doc_id}/letter.pdf")
    assert body["timings_ms"]["end_to_end_ms"] > 0 and body["completed_at"] >= body["submitted_at"]
    assert "pages" not in body and b"HOOKED" not in call["body"]
    assert call["headers"]["X-Ocrstream-Delivery"] == body["delivery_id"]
    # The result on the topic carries the URL, and the call is what the stage made of it.
    (rec,) = consume_all(s, s.topic("document-results"), 1, 30, key_filter=lambda k: k == doc_id.encode())
    result = decode(rec.value(), DocumentResult)
    assert result.webhook_url == rx.url("/once")
    assert body["delivery_id"] == delivery_id(s.topic("document-results"), result)

    # A restarted stage resumes after its committed offset: the result is not called again. A later
    # record on the same partition is called, so the restarted stage has read past it by then.
    deadline = time.monotonic() + 60
    while not committed_to_end(s, s.group("webhooks"), s.topic("document-results")):
        assert time.monotonic() < deadline, "the webhooks stage did not commit the result"
        time.sleep(0.2)
    runner.stop(hooks)
    runner.start(WebhookStage(s, StopFlag(install_signals=False)))
    marker = _result(f"marker-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/after-restart"))
    _produce_result(s, marker, partition=rec.partition())
    rx.wait("/after-restart")
    assert len(rx.on("/once")) == 1


@pytest.mark.integration
def test_a_result_published_twice_is_called_once(hooked, receivers):
    """The assembler re-publishes a result after a crash between result and done marker
    (at-least-once): same outcome, another ``completed_at``. One call, one delivery id."""
    s, _, _ = hooked
    rx, _ = receivers
    first = _result(f"twice-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/twice"))
    _produce_result(s, first, partition=0)
    _produce_result(s, first.model_copy(update={"completed_at": first.completed_at + 3000}), partition=0)
    marker = _result(f"marker-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/after-twice"))
    _produce_result(s, marker, partition=0)
    rx.wait("/after-twice")
    (call,) = rx.on("/twice")
    assert verified(call, SECRETS[None])["document_id"] == first.document_id


@pytest.mark.integration
def test_5xx_and_429_are_retried_until_the_receiver_accepts(hooked, receivers):
    s, _, _ = hooked
    rx, _ = receivers
    rx.script["/flaky"] = [500, 503]
    rx.script["/busy"] = [429]
    flaky = _result(f"flaky-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/flaky"))
    busy = _result(f"busy-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/busy"))
    _produce_result(s, flaky, partition=0)
    _produce_result(s, busy, partition=0)
    calls = rx.wait("/flaky", 3)
    assert [verified(c, SECRETS[None])["document_id"] for c in calls] == [flaky.document_id] * 3  # each signed anew
    assert len({c["headers"]["X-Ocrstream-Delivery"] for c in calls}) == 1  # one delivery
    two = rx.wait("/busy", 2)
    # Retry-After: 1 is honoured up to OCRSTREAM_WEBHOOK_RETRY_MAX_S (0.2 s here)
    assert two[1]["at"] - two[0]["at"] >= 0.18
    marker = _result(f"marker-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/after-flaky"))
    _produce_result(s, marker, partition=0)
    rx.wait("/after-flaky")
    assert len(rx.on("/flaky")) == 3  # accepted on the third: no fourth call


@pytest.mark.integration
def test_a_receiver_that_keeps_failing_becomes_a_dead_letter_and_the_stage_goes_on(hooked, receivers):
    s, _, _ = hooked
    rx, _ = receivers
    rx.script["/down?token=t0p"] = [500] * 10
    rx.script["/gone"] = [410]
    down = _result(f"down-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/down?token=t0p"))
    gone = _result(f"gone-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/gone"))
    _produce_result(s, down, partition=0)
    _produce_result(s, gone, partition=0)
    dl = _dead_letter(s, down.document_id, "webhooks")
    assert dl.reason == "webhook_failed" and dl.attempts == 3  # OCRSTREAM_WEBHOOK_ATTEMPTS
    assert dl.topic == s.topic("document-results") and "HTTP 500" in dl.message and "t0p" not in dl.message
    assert len(rx.on("/down?token=t0p")) == 3
    dl = _dead_letter(s, gone.document_id, "webhooks")
    assert dl.reason == "webhook_failed" and dl.attempts == 1 and "HTTP 410" in dl.message  # a 4xx is final
    assert len(rx.on("/gone")) == 1
    # the stage went on: the next result of the same partition is called
    marker = _result(f"marker-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/after-down"))
    _produce_result(s, marker, partition=0)
    rx.wait("/after-down")
    # the document's result is untouched: no failed result was published for it
    assert len([m for m in read_topic(s, s.topic("document-results")) if m.key() == down.document_id.encode()]) == 1


@pytest.mark.integration
def test_webhooks_outside_the_tenants_hosts_are_refused_by_the_splitter_before_any_read(hooked, receivers):
    """References published around the library's check: the splitter refuses them before it reads
    the object (they name objects that do not exist, so a read would say object_not_found). A
    document whose webhook is allowed but whose object is missing is called back with its failure."""
    s, _, _ = hooked
    rx, other = receivers
    acme = s.model_copy(update={"tenant": "acme"})
    cases = [  # (publisher settings, webhook_url, reason)
        (s, other.url("/stolen"), "webhook_not_allowed"),          # globex's receiver, default tenant
        (acme, other.url("/stolen"), "webhook_not_allowed"),       # globex's receiver, tenant acme
        (s, f"https://127.0.0.1:{rx.port}/tls", "webhook_not_allowed"),  # https where only http is allowed
        (s, "not a url", "invalid_webhook_url"),
    ]
    ids = []
    for client, url, reason in cases:
        doc_id = f"bad-hook-{uuid.uuid4().hex[:8]}"
        src = f"tenants/acme/missing-{doc_id}.pdf" if client.tenant else f"uploads/missing-{doc_id}.pdf"
        with DocumentPublisher(client) as pub:
            pub.publish_ref(DocumentRef(document_id=doc_id, submitted_at=now_ms(), webhook_url=url,
                                        source=ObjectRef(bucket=s.bucket, key=src, filename="x.pdf")))
        ids.append((client.tenant, doc_id, reason))
    missing_id = f"missing-{uuid.uuid4().hex[:8]}"
    with DocumentPublisher(s) as pub:
        pub.publish_ref(DocumentRef(document_id=missing_id, submitted_at=now_ms(), webhook_url=rx.url("/missing"),
                                    source=ObjectRef(bucket=s.bucket, key=f"uploads/{missing_id}.pdf",
                                                     filename="x.pdf")))
    results = {}
    for tenant in (None, "acme"):  # one reader per topic: each reader joins a group of its own
        keys = {d.encode() for t, d, _ in ids if t == tenant}
        for rec in consume_all(s, s.tenant_topic(tenant, "document-results"), len(keys), 60,
                               key_filter=lambda k, keys=keys: k in keys):
            results[rec.key().decode()] = decode(rec.value(), DocumentResult)
    from schemas import DeadLetter

    keys = {d.encode() for _, d, _ in ids}
    dead = {m.key().decode(): decode(m.value(), DeadLetter)
            for m in consume_all(s, s.topic("dead-letters"), len(keys), 60, key_filter=lambda k: k in keys)}
    for tenant, doc_id, reason in ids:
        result = results[doc_id]
        assert result.status == "failed" and result.error.code == reason, result.error
        assert result.webhook_url is None  # a refused URL is not carried on
        assert (dead[doc_id].stage, dead[doc_id].reason) == ("splitter", reason)
    body = verified(rx.wait("/missing")[0], SECRETS[None])  # a failure is called back too
    assert body["status"] == "failed" and body["error"]["code"] == "object_not_found"
    assert other.on("/stolen") == [] and rx.on("/tls") == []


@pytest.mark.integration
def test_the_webhooks_stage_checks_the_url_against_the_topics_tenant(hooked, receivers):
    """A result on acme's topic naming globex's receiver (forged: the splitter would have refused
    it) is a dead letter, not a call; acme's own calls are signed with acme's secret."""
    s, _, _ = hooked
    rx, other = receivers
    forged = _result(f"forged-{uuid.uuid4().hex[:6]}", webhook_url=other.url("/forged"))
    own = _result(f"own-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/acme"))
    _produce_result(s, forged, tenant="acme", partition=0)
    _produce_result(s, own, tenant="acme", partition=0)
    (call,) = rx.wait("/acme")
    assert verified(call, SECRETS["acme"])["document_id"] == own.document_id
    assert not signed_by(call, SECRETS[None])
    assert _dead_letter(s, forged.document_id, "webhooks").reason == "webhook_not_allowed"
    assert other.on("/forged") == []  # the later record on its partition was called: this one never will be


@pytest.mark.integration
def test_old_results_are_not_called_back(hooked, receivers):
    """A stage without committed offsets (a new group, offsets expired) reads the compacted topic
    from its start: results older than OCRSTREAM_WEBHOOK_MAX_AGE_S (a day) are not called."""
    s, _, _ = hooked
    rx, _ = receivers
    old = _result(f"old-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/old"), completed_at=now_ms() - 2 * 86400_000)
    _produce_result(s, old, partition=0)
    marker = _result(f"marker-{uuid.uuid4().hex[:6]}", webhook_url=rx.url("/after-old"))
    _produce_result(s, marker, partition=0)
    rx.wait("/after-old")
    assert rx.on("/old") == []


@pytest.mark.integration
def test_the_gateway_refuses_webhooks_outside_the_tenants_hosts_and_forwards_allowed_ones(hooked, receivers):
    from test_gateway import running_gateway

    s, _, _ = hooked
    rx, other = receivers
    keys = {None: "k-default", "acme": "k-acme"}
    gw = s.model_copy(update={"gateway_api_keys": SecretStr(
        ",".join(f"{k}={t or '-'}" for t, k in keys.items())), "gateway_quota_per_minute": 0,
        "gateway_max_backlog_pages": 0})
    pdf = make_pdf([["GATEWAY HOOK"]], size=(300, 200))
    store = ObjectStore(s)
    key = "tenants/acme/hooked.pdf"
    store.put_bytes(key, pdf, "application/pdf")
    uploads_before = len(list(store.client.list_objects(s.bucket, prefix=s.upload_prefix, recursive=True)))
    with running_gateway(gw) as client:
        auth = {None: {"X-API-Key": keys[None]}, "acme": {"X-API-Key": keys["acme"]}}
        r = client.post("/v1/documents", headers=auth[None], files={"file": ("a.pdf", pdf, "application/pdf")},
                        data={"webhook_url": other.url("/gw-stolen")})
        assert r.status_code == 403 and r.json()["code"] == "webhook_not_allowed", r.text
        r = client.post("/v1/documents", headers=auth[None], files={"file": ("a.pdf", pdf, "application/pdf")},
                        data={"webhook_url": "ftp://127.0.0.1/x"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_webhook_url", r.text
        r = client.post("/v1/documents", headers=auth["acme"],
                        json={"bucket": s.bucket, "key": key, "webhook_url": other.url("/gw-stolen")})
        assert r.status_code == 403 and r.json()["code"] == "webhook_not_allowed", r.text
        assert len(list(store.client.list_objects(s.bucket, prefix=s.upload_prefix, recursive=True))) == \
            uploads_before  # refused before anything was stored
        r = client.post("/v1/documents", headers=auth["acme"],
                        json={"bucket": s.bucket, "key": key, "webhook_url": rx.url("/gw")})
        assert r.status_code == 202, r.text
        doc_id = r.json()["document_id"]
        etag = store.stat(s.bucket, key).etag
        # the webhook is part of the document's identity (a callback needs a result of its own)
        assert doc_id == stable_document_id(s.bucket, key, etag, None, DocumentOptions(), "acme", None, webhook_url=rx.url("/gw"))
        assert doc_id != stable_document_id(s.bucket, key, etag, None, DocumentOptions(), "acme")
        body = verified(rx.wait("/gw")[0], SECRETS["acme"])
        assert body["document_id"] == doc_id and body["status"] == "succeeded"
        deadline = time.monotonic() + 30  # the gateway's results table may see the result after the call
        while (status := client.get(f"/v1/documents/{doc_id}", headers=auth["acme"]).json()["status"]) == "pending":
            assert time.monotonic() < deadline, "the gateway never saw the result the webhook reported"
            time.sleep(0.1)
        assert status == "succeeded"
    assert other.on("/gw-stolen") == []


@pytest.mark.integration
def test_a_receiver_that_is_down_cools_down_and_stop_interrupts_retries(stack, receivers):
    """Deliveries straight from a stage object (no consumer loop): after one delivery spent its
    retries on a host, the next one to that host makes a single call, a success ends the
    cooldown; SIGTERM (the stop flag) ends a delivery's retries at once."""
    rx, _ = receivers
    s = base_settings(webhook_allowed_hosts={"-": f"http://127.0.0.1:{rx.port}"}, webhook_secrets="-=k",
                      **{**FAST, "webhook_host_cooldown_s": 60})
    stop = StopFlag(install_signals=False)
    stage = WebhookStage(s, stop)
    try:
        rx.script["/cool"] = [500] * 4
        with pytest.raises(OcrstreamError) as e:
            stage.deliver(rx.url("/cool"), b"{}", "d1", b"k")
        assert e.value.code == "webhook_failed" and e.value.attempts == 3
        with pytest.raises(OcrstreamError) as e:
            stage.deliver(rx.url("/cool"), b"{}", "d2", b"k")
        assert e.value.attempts == 1 and "cooling down" in e.value.message
        assert len(rx.on("/cool")) == 4
        stage.deliver(rx.url("/cool"), b"{}", "d3", b"k")  # one call, accepted: the cooldown ends
        rx.script["/cool"] = [500, 200]
        stage.deliver(rx.url("/cool"), b"{}", "d4", b"k")  # retried again
        assert len(rx.on("/cool")) == 7

        slow = s.model_copy(update={"webhook_attempts": 50, "webhook_retry_base_s": 5.0, "webhook_retry_max_s": 5.0,
                                    "webhook_host_cooldown_s": 0})
        stage2 = WebhookStage(slow, stop)
        rx.script["/stop"] = [500] * 50
        threading.Timer(0.5, stop.set).start()
        t0 = time.monotonic()
        with pytest.raises(_Interrupted):
            stage2.deliver(rx.url("/stop"), b"{}", "d5", b"k")
        assert time.monotonic() - t0 < 5, "the stop flag did not end the retries"
        stage2.client.close()
        stage2.rt.close()
    finally:
        stage.client.close()
        stage.rt.close()


@pytest.mark.integration
def test_submit_refuses_a_webhook_outside_the_allowed_hosts_before_uploading(hooked, receivers, tmp_path):
    s, _, _ = hooked
    _, other = receivers
    path = tmp_path / "a.pdf"
    path.write_bytes(make_pdf([["X"]], size=(200, 100)))
    store = ObjectStore(s)

    def uploads() -> int:
        return len(list(store.client.list_objects(s.bucket, prefix=s.upload_prefix, recursive=True)))

    before = uploads()
    proc = subprocess.run([sys.executable, "-m", "ocrstream.cli", "submit", "--webhook", other.url("/cli"), str(path)],
                          env=settings_env(s), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "webhook_not_allowed" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(OcrstreamError) as e:  # the library refuses it too, before any upload
        with DocumentPublisher(s) as pub:
            pub.upload_and_publish(path, webhook_url=other.url("/lib"))
    assert e.value.code == "webhook_not_allowed"
    assert uploads() == before
