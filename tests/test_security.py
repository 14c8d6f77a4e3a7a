"""SASL/SCRAM over TLS against a real local broker, configured only through OCRSTREAM_* settings.

A second broker is started for this module with a SASL_SSL listener (SCRAM-SHA-512, a
certificate signed by a CA made here with trustme) for clients, and a PLAINTEXT listener
for its own inter-broker/health traffic only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import SecretStr
from confluent_kafka import Consumer, KafkaError, KafkaException

from ocrstream.streaming import StopFlag
from consumers.splitter import Splitter
from devtools.stack import KafkaService
from ocrstream.kafka import consumer_config, make_admin
from producers.publish import DocumentPublisher
from schemas import PageTask, decode
from topology import apply_topics, topic_specs

from conftest import base_settings, consume_all, make_pdf

pytestmark = pytest.mark.integration

PASSWORD = "s3cr3t-scram-pa55"
SASL_PORT, INTERNAL_PORT, CONTROLLER_PORT = 29292, 29294, 29293


def _make_certificates(d: Path) -> None:
    """A test CA (``ca.pem``) and the broker's key + certificate for 127.0.0.1 in a PKCS12 keystore
    (``broker.p12``, password ``changeit``), made in Python with trustme and cryptography."""
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, load_pem_private_key, pkcs12

    ca = trustme.CA(organization_name="ocrstream-test-ca")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    key = load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    cert, *chain = (x509.load_pem_x509_certificate(pem.bytes()) for pem in leaf.cert_chain_pems)
    (d / "broker.p12").write_bytes(pkcs12.serialize_key_and_certificates(
        b"broker", key, cert, chain, BestAvailableEncryption(b"changeit")))


def sasl_ssl_props(d: Path, sasl_port: int, internal_port: int, controller_port: int) -> dict[str, str]:
    """Broker properties for a SASL_SSL (SCRAM-SHA-512) listener with the keystore that
    :func:`_make_certificates` wrote into ``d``, beside PLAINTEXT listeners for the broker's own
    inter-broker and controller traffic."""
    return {
        "listeners": f"SASL_SSL://127.0.0.1:{sasl_port},PLAINTEXT://127.0.0.1:{internal_port},"
                     f"CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{sasl_port},PLAINTEXT://127.0.0.1:{internal_port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(d / "broker.p12"),
        "ssl.keystore.password": "changeit",
    }


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory, stack):
    d = tmp_path_factory.mktemp("tls")
    _make_certificates(d)
    s = base_settings(kafka_port=INTERNAL_PORT, kafka_controller_port=CONTROLLER_PORT, stack_dir=d / "stack")
    kafka = KafkaService(s)
    props = sasl_ssl_props(d, SASL_PORT, INTERNAL_PORT, CONTROLLER_PORT)
    kafka.up(extra_props=props, format_args=["--add-scram", f"SCRAM-SHA-512=[name=ocr,password={PASSWORD}]"])
    yield d
    kafka.down()


def _secure(stack_settings, ca: Path, password: str = PASSWORD):
    return stack_settings.model_copy(update={
        "kafka_bootstrap_servers": f"127.0.0.1:{SASL_PORT}", "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "ocr",
        "kafka_sasl_password": SecretStr(password), "kafka_ssl_ca_location": str(ca),
    })


def test_stages_work_over_sasl_scram_tls(tls_broker, store, settings, stages, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    s = _secure(settings, tls_broker / "ca.pem")
    reports = apply_topics(make_admin(s), topic_specs(), s.topic_prefix)
    assert {r.action for r in reports} == {"created"}
    pdf = tmp_path / "secure.pdf"
    pdf.write_bytes(make_pdf([["over TLS"], ["page two"]]))
    with DocumentPublisher(s) as pub:
        doc_id = pub.upload_and_publish(pdf)
    stages.start(Splitter(s, StopFlag(install_signals=False)))
    tasks = [decode(m.value(), PageTask) for m in consume_all(s, s.topic("pages"), 2, 60)]
    assert {t.document_id for t in tasks} == {doc_id} and sorted(t.page_number for t in tasks) == [1, 2]
    out, err = capfd.readouterr()
    assert PASSWORD not in caplog.text + out + err


def test_wrong_password_is_refused_and_not_logged(tls_broker, settings, caplog, capfd):
    s = _secure(settings, tls_broker / "ca.pem", password="wrong-" + PASSWORD)
    errors = []
    c = Consumer(consumer_config(s, "intruders", error_cb=errors.append))
    try:
        with pytest.raises(KafkaException):
            c.list_topics(timeout=10)  # no metadata without authentication
        c.poll(1)  # serve the error callback
        assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    finally:
        c.close()
    out, err = capfd.readouterr()
    assert "wrong-" + PASSWORD not in caplog.text + out + err


def test_cli_reports_refused_credentials_in_one_line(tls_broker, settings):
    """``ocrstream topics apply`` with a wrong SCRAM password: exit code KAFKA_REFUSED and one
    line naming the settings to check, without the password (see tests/test_cli_errors.py)."""
    import subprocess
    import sys

    from ocrstream.preflight import ExitCode

    from conftest import REPO, settings_env

    s = _secure(settings, tls_broker / "ca.pem", password="wrong-" + PASSWORD)
    proc = subprocess.run([sys.executable, "-m", "ocrstream.cli", "topics", "apply"], env=settings_env(s),
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    err = proc.stderr.strip()
    assert proc.returncode == ExitCode.KAFKA_REFUSED, (proc.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"127.0.0.1:{SASL_PORT}" in err and "OCRSTREAM_KAFKA_SASL_PASSWORD" in err
    assert PASSWORD not in err


def test_no_stage_leaks_a_secret(tls_broker, settings, store, processes, tmp_path):
    """Every stage as a subprocess with the SASL password, S3 secret and a webhook signing secret
    set, logging at DEBUG; a failure driven through each (a missing object, a record that is not
    JSON, a forbidden source, a corrupt PDF, a refused drop-folder key); then every stage log,
    dead letter, result, metrics sample (values and headers) and webhook call is scanned for them."""
    import signal

    from confluent_kafka import Producer

    from ocrstream.kafka import producer_config
    from ocrstream.streaming import now_ms
    from schemas import DocumentRef, DocumentResult, ObjectRef, encode

    from conftest import read_topic

    from pydantic import SecretStr

    from test_webhooks import Receiver

    receiver = Receiver()  # the webhooks stage signs its calls with a secret of its own
    hook_secret = "whsec-leak-probe-58d1"
    s = _secure(settings, tls_broker / "ca.pem").model_copy(update={
        "webhook_allowed_hosts": {"-": f"http://127.0.0.1:{receiver.port}"},
        "webhook_secrets": SecretStr(f"-={hook_secret}")})
    secrets = [PASSWORD, s.s3_secret_key.get_secret_value(), hook_secret]
    apply_topics(make_admin(s), topic_specs(), s.topic_prefix)
    # librdkafka's security/broker/conf debug contexts too: where a client library would leak a password.
    env = {"OCRSTREAM_LOG_LEVEL": "DEBUG", "OCRSTREAM_METRICS_INTERVAL_S": "1",
           "OCRSTREAM_KAFKA_DEBUG": "security,broker,conf"}
    procs = [processes.start(s, stage, **env) for stage in ("splitter", "worker", "assembler", "watch", "webhooks")]

    store.put_bytes("uploads/ok.pdf", make_pdf([["VALID"]]), "application/pdf")
    store.put_bytes("uploads/corrupt.pdf", b"%PDF-1.7\n" + b"\x00garbage" * 50, "application/pdf")
    store.put_bytes("inbox/dropped.pdf", make_pdf([["DROPPED"]]), "application/pdf")
    refs = {"ok": "uploads/ok.pdf", "missing": "uploads/missing.pdf", "corrupt": "uploads/corrupt.pdf",
            "forbidden": "internal/payroll.pdf"}
    p = Producer(producer_config(s))
    for doc_id, key in refs.items():
        ref = DocumentRef(document_id=doc_id, submitted_at=now_ms(), webhook_url=receiver.url(f"/{doc_id}"),
                          source=ObjectRef(bucket=s.bucket, key=key, filename=key.rsplit("/", 1)[-1]))
        p.produce(s.topic("ingest"), encode(ref), doc_id)
    p.produce(s.topic("ingest"), b"{not json", b"garbage")
    assert p.flush(30) == 0

    results = {m.key().decode(): decode(m.value(), DocumentResult)
               for m in consume_all(s, s.topic("document-results"), len(refs) + 1, 180)}
    assert results["ok"].status == "succeeded"
    assert results["missing"].error.code == "object_not_found" and results["corrupt"].status == "failed"
    assert results["forbidden"].error.code == "forbidden_source"
    assert any(r.source.key == "inbox/dropped.pdf" for r in results.values())  # the watcher published it
    consume_all(s, s.topic("metrics"), 1, 60)  # a worker sample exists
    calls = [receiver.wait(f"/{doc_id}", timeout_s=60)[0] for doc_id in ("ok", "missing")]  # signed, not leaked
    receiver.close()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(60)

    scanned = 0
    for topic in ("dead-letters", "document-results", "page-results", "metrics", "ingest", "pages"):
        for m in read_topic(s, s.topic(topic)):
            blob = (m.value() or b"") + b"".join(k.encode() + (v or b"") for k, v in (m.headers() or []))
            scanned += 1
            for secret in secrets:
                assert secret.encode() not in blob, (topic, m.offset())
    for call in calls:
        blob = call["body"] + "".join(f"{k}{v}" for k, v in call["headers"].items()).encode()
        for secret in secrets:
            assert secret.encode() not in blob, call["path"]
    logs = {proc.log_path: open(proc.log_path, errors="replace").read() for proc in procs}
    assert all("DEBUG" in text for text in logs.values())  # the stages did log at DEBUG
    for path, text in logs.items():
        for secret in secrets:
            assert secret not in text, path
    assert scanned >= 10
