"""Kafka ACLs per role (topology/acls.py) against a real broker with KRaft's StandardAuthorizer.

A broker with a SASL_SSL listener, ``allow.everyone.if.no.acl.found=false`` and one SCRAM user
per role plus ``admin`` (the only super user besides the broker's own PLAINTEXT listeners).
``ocrstream acls apply`` (as admin) creates the ACLs generated from the topology; then

- a matrix of denials, each checked against the broker: a role cannot write, read, join a
  group or use a transactional id that is not its own;
- every stage runs end to end as a subprocess with only its own principal (no wildcard grant):
  a document submitted by the submitter principal gets its result and its completion webhook
  (the webhooks stage reads the default tenant's and a tenant's results), and so do documents
  submitted through the HTTP gateway (``ocrstream gateway`` as its own principal, a real POST
  and GET over HTTP for the default tenant and a tenant).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import httpx

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from pydantic import SecretStr

from devtools.stack import KafkaService
from ocrstream.kafka import consumer_config, make_admin, producer_config
from producers.publish import DocumentPublisher
from producers.results import ResultFollower
from topology import ROLES, apply_topics, follower_group, tenant_topic, topic_specs
from topology.acls import tenant_role

from conftest import REPO, base_settings, committed_to_end, make_pdf, settings_env, wait_ready
from test_security import _make_certificates, sasl_ssl_props

pytestmark = pytest.mark.integration

# moved with the rest of the test stack, so two checkouts' sessions can run this side by side
_OFFSET = int(os.environ.get("OCRSTREAM_TEST_PORT_OFFSET", "0"))
SASL_PORT, INTERNAL_PORT, CONTROLLER_PORT = 29492 + _OFFSET, 29494 + _OFFSET, 29493 + _OFFSET
TENANTS = ("acme", "globex")
USERS = ("admin", *ROLES, *(tenant_role(t) for t in TENANTS))


def _password(user: str) -> str:
    return f"{user}-pw-5f2c"


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory, stack):
    d = tmp_path_factory.mktemp("acl")
    _make_certificates(d)
    s = base_settings(kafka_port=INTERNAL_PORT, kafka_controller_port=CONTROLLER_PORT, stack_dir=d / "stack")
    kafka = KafkaService(s)
    props = {
        **sasl_ssl_props(d, SASL_PORT, INTERNAL_PORT, CONTROLLER_PORT),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        # the broker's own PLAINTEXT listeners (inter-broker, controller) are ANONYMOUS
        "super.users": "User:admin;User:ANONYMOUS",
    }
    scram = [arg for user in USERS for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={_password(user)}]")]
    kafka.up(extra_props=props, format_args=scram)
    yield d
    kafka.down()


def _as(settings, acl_broker, user: str):
    return settings.model_copy(update={
        "kafka_bootstrap_servers": f"127.0.0.1:{SASL_PORT}", "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": user,
        "kafka_sasl_password": SecretStr(_password(user)), "kafka_ssl_ca_location": str(acl_broker / "ca.pem"),
        "acl_principal": "User:{role}",
    })


@pytest.fixture(scope="module")
def roles(acl_broker, stack):
    """Topics created and ACLs applied (``ocrstream acls apply`` as admin); role -> settings."""
    tag = uuid.uuid4().hex[:8]
    s0 = base_settings(topic_prefix=f"a{tag}.", group_prefix=f"g{tag}.", bucket=f"acl-{tag}",
                       tenants={t: f"acl-{tag}/tenants/{t}/" for t in TENANTS},
                       result_cache_ttl_h=168.0)  # its reads and writes are the splitter's and the assembler's
    by_role = {user: _as(s0, acl_broker, user) for user in USERS}
    for t in TENANTS:  # a tenant's client: its own topics and upload folder
        by_role[tenant_role(t)] = by_role[tenant_role(t)].model_copy(update={"tenant": t,
                                                                              "upload_prefix": f"tenants/{t}/"})
    admin = by_role["admin"]
    apply_topics(make_admin(admin), topic_specs(tenants=TENANTS), admin.topic_prefix)
    proc = subprocess.run([sys.executable, "-m", "ocrstream.cli", "acls", "apply"], env=settings_env(admin),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "User:worker" in proc.stdout and "User:tenant-acme" in proc.stdout and "created" in proc.stdout
    return by_role


def _produce_error(s, topic: str) -> int | None:
    errors = []
    p = Producer(producer_config(s))
    p.produce(s.topic(topic), b"{}", b"k", on_delivery=lambda err, msg: errors.append(err))
    p.flush(20)
    return errors[0].code() if errors and errors[0] is not None else None


def _read_error(s, topic: str, group: str | None = None) -> int | None:
    """The error reading ``topic`` (partition 0 by assignment, or subscribed as ``group``), or
    None when a record was read. Fails when neither happens within 20 s.

    A Fetch refused by the broker surfaces as a consumer error. A topic the principal may not
    even DESCRIBE is refused one step earlier, in the Metadata answer, which librdkafka keeps
    retrying for an assigned partition without telling the application: that error is read
    from the metadata instead.
    """
    c = Consumer(consumer_config(s, group or f"{s.group(follower_group(s.tenant))}-{uuid.uuid4().hex[:6]}"))
    try:
        if group:
            c.subscribe([s.topic(topic)])
        else:
            c.assign([TopicPartition(s.topic(topic), 0, 0)])
        for _ in range(50):  # bounded: 10 s
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error() is None:
                return None
            if m.error().code() != KafkaError._PARTITION_EOF:
                return m.error().code()
        meta = c.list_topics(s.topic(topic), timeout=10).topics[s.topic(topic)]
        if meta.error is not None:
            return meta.error.code()
        pytest.fail(f"{s.kafka_sasl_username} reading {topic}: neither a record nor an error within 20 s")
    finally:
        c.close()


def _txn_error(s, transactional_id: str) -> int | None:
    p = Producer(producer_config(s, transactional_id=transactional_id))
    try:
        p.init_transactions(20)
    except KafkaException as exc:
        return exc.args[0].code()
    return None


def test_each_role_is_refused_what_is_not_its_own(roles):
    denied_topic, denied_group = KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED
    p = Producer(producer_config(roles["assembler"]))  # a result to read on partition 0
    p.produce(roles["assembler"].topic("document-results"), b"{}", b"probe", partition=0)
    assert p.flush(20) == 0
    assert _read_error(roles["submitter"], "document-results") is None
    assert _produce_error(roles["worker"], "ingest") == denied_topic  # a worker cannot inject documents
    assert _produce_error(roles["splitter"], "page-results") == denied_topic
    assert _produce_error(roles["assembler"], "ingest") == denied_topic
    assert _produce_error(roles["submitter"], "pages") == denied_topic  # nor skip the splitter's checks
    assert _read_error(roles["submitter"], "page-results") == denied_topic
    assert _read_error(roles["watcher"], "pages", group=roles["watcher"].group("watch")) == denied_topic
    assert _read_error(roles["submitter"], "document-results", group=roles["submitter"].group("worker")) == denied_group
    assert _txn_error(roles["worker"], roles["worker"].group("splitter") + "-x") == \
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    # the operator re-drives dead letters but is not a stage: it cannot commit as one
    assert _read_error(roles["operator"], "pages", group=roles["operator"].group("worker")) == denied_group
    assert _produce_error(roles["operator"], "assembler-state") == denied_topic
    # a tenant writes only its own ingest topic, reads only its own results, joins no stage's group
    acme = roles[tenant_role("acme")]
    assert _produce_error(acme, tenant_topic("globex", "ingest")) == denied_topic
    assert _produce_error(acme, "ingest") == denied_topic  # nor the default tenant's
    assert _read_error(acme, tenant_topic("globex", "document-results")) == \
        denied_topic
    assert _read_error(acme, "ingest", group=acme.group("splitter")) == denied_group
    assert _produce_error(acme, tenant_topic("acme", "ingest")) is None
    # the gateway publishes references and reads results, but is no stage: no page tasks, no
    # page results, no group it could join (it assign()s; its `gateway-*` groups are DESCRIBE only)
    gw = roles["gateway"]
    assert _produce_error(gw, "pages") == denied_topic
    assert _produce_error(gw, "page-results") == denied_topic
    assert _read_error(gw, "document-results", group=gw.group("gateway") + "-joined") == denied_group
    assert _produce_error(gw, tenant_topic("globex", "ingest")) is None  # every tenant's ingest topic
    # ... and allowed what is: the same calls on its own resources succeed
    assert _produce_error(roles["submitter"], "ingest") is None
    assert _txn_error(roles["worker"], roles["worker"].group("worker") + "-x") is None


def test_every_stage_runs_with_only_its_own_acls(roles, processes, tmp_path):
    from ocrstream.storage import ObjectStore
    from test_webhooks import Receiver, verified

    # Completion webhooks too: both documents name a callback, which the webhooks stage (its own
    # principal) makes after reading the default tenant's and acme's results topics.
    receiver = Receiver()
    secrets = {None: "acl-hook-default", "acme": "acl-hook-acme"}
    hooks = {"webhook_allowed_hosts": {"-": f"http://127.0.0.1:{receiver.port}", "acme": f"http://127.0.0.1:{receiver.port}"},
             "webhook_secrets": SecretStr(",".join(f"{t or '-'}={k}" for t, k in secrets.items()))}
    roles = {role: s.model_copy(update=hooks) for role, s in roles.items()}
    ObjectStore(roles["admin"]).ensure_bucket()
    for stage, role in (("splitter", "splitter"), ("worker", "worker"), ("assembler", "assembler"),
                        ("watch", "watcher"), ("sink outbox", "outbox"), ("sink parquet", "analytics"),
                        ("webhooks", "webhooks")):
        processes.start(roles[role], stage)
    path = tmp_path / "acl.pdf"
    path.write_bytes(make_pdf([["LEAST PRIVILEGE"]]))
    for client in (roles["submitter"], roles[tenant_role("acme")]):  # the default tenant's and a tenant's
        follower = ResultFollower(client)
        with DocumentPublisher(client) as pub:
            doc_id = pub.upload_and_publish(path, webhook_url=receiver.url(f"/{client.kafka_sasl_username}"))
        try:
            results = follower.wait_for([doc_id], timeout_s=180)
        except TimeoutError:
            logs = "".join(f"\n--- {p.log_path}\n" + open(p.log_path, errors="replace").read()[-3000:]
                           for p in processes.procs)
            raise AssertionError(f"no result for {client.kafka_sasl_username} with per-role ACLs{logs}") from None
        finally:
            follower.close()
        assert results[doc_id].status == "succeeded", results[doc_id].error
        assert "LEAST" in results[doc_id].text()
        (call,) = receiver.wait(f"/{client.kafka_sasl_username}", timeout_s=120)
        assert verified(call, secrets[client.tenant])["document_id"] == doc_id
    receiver.close()
    _gateway_round_trip(roles, processes, path)
    # The sinks read the results as their own principals and commit in their own groups.
    admin = roles["admin"]
    deadline = time.monotonic() + 120
    for group, topic in (("outbox", "document-results"), ("analytics", "document-results"),
                         ("webhooks", "document-results"), ("webhooks", tenant_topic("acme", "document-results"))):
        while not committed_to_end(admin, admin.group(group), admin.topic(topic)):
            assert time.monotonic() < deadline, f"the {group} stage did not commit {topic} with its own ACLs"
            time.sleep(1.0)
    for p in processes.procs:
        log = open(p.log_path, errors="replace").read()
        assert "AUTHORIZATION_FAILED" not in log, p.log_path


def _gateway_round_trip(roles, processes, path) -> None:
    """``ocrstream gateway`` as principal ``gateway``: an upload POSTed for the default tenant and
    one for a tenant, each followed by GETs until its result is there. The backlog limit is on
    (each POST describes ``pages`` and the worker group: a refused measurement would be a 503) and
    the results cache is 0 bytes (each GET re-reads the result by offset with the fetch consumer),
    so every grant of the role is used; the caller asserts no AUTHORIZATION_FAILED in its log."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    keys = {None: "gw-key-default", "acme": "gw-key-acme"}
    gw = roles["gateway"].model_copy(update={"gateway_host": "127.0.0.1", "gateway_port": port,
                                             "gateway_max_backlog_pages": 1000, "gateway_results_cache_bytes": 0})
    proc = processes.start(gw, "gateway", OCRSTREAM_GATEWAY_API_KEYS=",".join(f"{k}={t or '-'}" for t, k in keys.items()))

    def failure(what: str) -> AssertionError:
        return AssertionError(f"gateway with its own ACLs: {what}\n{open(proc.log_path, errors='replace').read()[-3000:]}")

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        try:
            wait_ready(client, 60, died=lambda: proc.poll() is not None and f"exit {proc.poll()}", every_s=0.3)
        except AssertionError as exc:
            raise failure(str(exc)) from None
        for tenant, key in keys.items():
            auth = {"Authorization": f"Bearer {key}"}
            r = client.post("/v1/documents", headers=auth, files={"file": ("acl.pdf", path.read_bytes(), "application/pdf")})
            if r.status_code != 202:
                raise failure(f"POST as {tenant or 'default'}: {r.status_code} {r.text}")
            doc_id = r.json()["document_id"]
            deadline = time.monotonic() + 180
            while (body := client.get(f"/v1/documents/{doc_id}", headers=auth).json())["status"] == "pending":
                if time.monotonic() > deadline:
                    raise failure(f"no result for {doc_id} ({tenant or 'default'}) within 180 s")
                time.sleep(0.5)
            assert body["status"] == "succeeded", body
            assert "LEAST" in client.get(f"/v1/documents/{doc_id}/text", headers=auth).text
            # a tenant's key does not see the default tenant's document, and vice versa
            other = keys["acme" if tenant is None else None]
            assert client.get(f"/v1/documents/{doc_id}", headers={"X-API-Key": other}).status_code == 404
