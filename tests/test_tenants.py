"""Tenants (topology/tenants.py): several publishers share one deployment without reading each
other's objects or results.

The tenant of a document is the ingest topic it arrived on, never a field of the record; each
tenant's references are checked against its own allowed sources, and its results go to its own
results topic. Two tenants submitting the same object, or the same document id, get two
documents: their own ids (stable ids include the tenant), their own assembler state and done
markers (document key ``<tenant>/<id>``), their own worker cache entries.
"""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Producer

from consumers.assembler import Assembler
from consumers.splitter import Splitter
from consumers.worker import OcrWorker
from ocrstream.engine import create_engine
from ocrstream.errors import OcrstreamError
from ocrstream.kafka import make_admin, producer_config
from ocrstream.sources import check_source
from ocrstream.streaming import StopFlag, now_ms
from producers.publish import DocumentPublisher
from schemas import DeadLetter, DocumentRef, DocumentResult, EngineInfo, ObjectRef, PageResult, PageTask, decode, encode
from topology import apply_topics, split_document_key, tenant_of_topic, tenant_topic, topic_specs

from conftest import committed_to_end, consume_all, make_pdf, read_topic

pytestmark = pytest.mark.integration


def test_tenant_topics_and_keys():
    assert tenant_topic(None, "ingest") == "ingest" and tenant_topic("acme", "ingest") == "tenant.acme.ingest"
    assert tenant_of_topic("tenant.acme.document-results") == "acme" and tenant_of_topic("ingest") is None
    assert tenant_of_topic("tenant.acme.pages") is None  # internal topics are shared, not a tenant's
    assert split_document_key("acme/d1") == ("acme", "d1") and split_document_key("d1") == (None, "d1")
    with pytest.raises(ValueError):
        tenant_topic("Acme.evil", "ingest")  # a dot would make another topic's name


@pytest.fixture
def tenants(settings):
    """Settings with tenants ``acme`` and ``globex`` (own folders plus a shared one), topics applied;
    tenant -> that tenant's client settings (``OCRSTREAM_TENANT``)."""
    b = settings.bucket
    s = settings.model_copy(update={"tenants": {"acme": f"{b}/tenants/acme/,{b}/shared/",
                                                "globex": f"{b}/tenants/globex/,{b}/shared/"}})
    apply_topics(make_admin(s), topic_specs(tenants=tuple(s.tenants)), s.topic_prefix)
    return s, {t: s.model_copy(update={"tenant": t}) for t in s.tenants}


def _text(result: DocumentResult) -> str:
    return result.text().replace("\n", " ")


def test_tenants_are_kept_apart(tenants, store, stages):
    s, client = tenants
    store.put_bytes("shared/same.pdf", make_pdf([["SHARED TEXT"]]), "application/pdf")
    store.put_bytes("tenants/acme/a.pdf", make_pdf([["ACME PRIVATE TEXT"]]), "application/pdf")
    store.put_bytes("tenants/globex/g.pdf", make_pdf([["GLOBEX PRIVATE TEXT"]]), "application/pdf")

    # The client refuses what its tenant may not read (and the pipeline does it again below).
    with pytest.raises(OcrstreamError) as refused:
        check_source(client["acme"], s.bucket, "tenants/globex/g.pdf", "acme")
    assert refused.value.code == "forbidden_source"

    ids = {}
    for t in ("acme", "globex"):
        with DocumentPublisher(client[t]) as pub:
            ids[t] = pub.publish_object(s.bucket, "shared/same.pdf")  # the same object, version and options
            pub.publish_object(s.bucket, f"tenants/{t}/{t[0]}.pdf", document_id="same-id")  # a chosen, equal id
    assert ids["acme"] != ids["globex"]
    # A publisher that skips the client's check: acme names globex's object, and the default
    # tenant (the plain ingest topic) names acme's. Neither is read.
    p = Producer(producer_config(s))
    for topic, doc_id, key in ((s.tenant_topic("acme", "ingest"), "steal", "tenants/globex/g.pdf"),
                               (s.topic("ingest"), "default-steal", "tenants/acme/a.pdf")):
        ref = DocumentRef(document_id=doc_id, submitted_at=now_ms(),
                          source=ObjectRef(bucket=s.bucket, key=key, filename="x.pdf"))
        p.produce(topic, encode(ref), doc_id)
    # A field cannot claim a tenant: this reference on acme's topic stays acme's.
    spoof = DocumentRef(document_id="spoof", submitted_at=now_ms(),
                        source=ObjectRef(bucket=s.bucket, key="tenants/acme/a.pdf", filename="a.pdf",
                                         etag=store.stat(s.bucket, "tenants/acme/a.pdf").etag))
    p.produce(s.tenant_topic("acme", "ingest"), orjson.dumps({**orjson.loads(encode(spoof)), "tenant": "globex"}),
              b"spoof")
    # A page result forged onto the internal topic for a tenant that does not exist: a dead
    # letter, and no results topic hears of it.
    forged = PageResult(document_id="doc-x", tenant="evil", source=spoof.source, page_number=1, page_count=1,
                        width=1, height=1, engine=EngineInfo(name="none"), worker_id="forger",
                        submitted_at=now_ms(), completed_at=now_ms())
    p.produce(s.topic("page-results"), encode(forged), b"evil/doc-x")
    assert p.flush(30) == 0

    reads: list[tuple[str, str]] = []
    splitter = Splitter(s, StopFlag(install_signals=False))
    worker = OcrWorker(s, engine=create_engine(s), stop=StopFlag(install_signals=False))
    get_bytes = worker.fetch.cache.store.get_bytes
    worker.fetch.cache.store.get_bytes = lambda bucket, key, *a, **kw: (reads.append((bucket, key)),
                                                                       get_bytes(bucket, key, *a, **kw))[1]
    for stage in (splitter, worker, Assembler(s, StopFlag(install_signals=False))):
        stages.start(stage)

    def results(tenant, count):
        return {m.key().decode(): decode(m.value(), DocumentResult)
                for m in consume_all(s, s.tenant_topic(tenant, "document-results"), count, 180)}

    acme, globex = results("acme", 4), results("globex", 2)
    assert set(acme) == {ids["acme"], "same-id", "steal", "spoof"} and set(globex) == {ids["globex"], "same-id"}
    assert "ACME" in _text(acme["spoof"])
    assert "SHARED" in _text(acme[ids["acme"]]) and "SHARED" in _text(globex[ids["globex"]])
    assert "ACME" in _text(acme["same-id"]) and "GLOBEX" not in _text(acme["same-id"])
    assert "GLOBEX" in _text(globex["same-id"]) and "ACME" not in _text(globex["same-id"])
    assert acme["steal"].status == "failed" and acme["steal"].error.code == "forbidden_source"
    default = results(None, 1)
    assert default["default-steal"].error.code == "forbidden_source"
    dead = {d.key: d for d in (decode(m.value(), DeadLetter) for m in consume_all(s, s.topic("dead-letters"), 3, 60))}
    assert (dead["evil/doc-x"].reason, dead["evil/doc-x"].stage) == ("forbidden_source", "assembler")
    assert dead["steal"].reason == dead["default-steal"].reason == "forbidden_source"

    # Every page task says whose it is; the shared object was downloaded once per tenant.
    tasks = [decode(m.value(), PageTask) for m in read_topic(s, s.topic("pages"))]
    assert sorted((t.tenant, t.document_id) for t in tasks) == sorted(
        [("acme", ids["acme"]), ("acme", "same-id"), ("acme", "spoof"), ("globex", ids["globex"]),
         ("globex", "same-id")])
    # one download per (tenant, object): the shared object twice, acme's file once for its two documents
    assert sorted(reads) == sorted([(s.bucket, "shared/same.pdf")] * 2 + [(s.bucket, "tenants/acme/a.pdf"),
                                                                          (s.bucket, "tenants/globex/g.pdf")])

    # Once every stage has committed all of its input, no result went anywhere else.
    deadline = time.monotonic() + 60
    while not all(committed_to_end(s, s.group(g), t) for g, t in
                  [("splitter", topic) for topic in s.ingest_topics()] + [("assembler", s.topic("page-results"))]):
        assert time.monotonic() < deadline, "stages did not commit their input"
        time.sleep(0.5)
    seen = {t: sorted(m.key().decode() for m in read_topic(s, s.tenant_topic(t, "document-results")))
            for t in (None, "acme", "globex")}
    assert seen == {None: ["default-steal"], "acme": sorted(acme), "globex": sorted(globex)}
