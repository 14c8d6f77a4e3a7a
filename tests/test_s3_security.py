"""The object store side of least privilege, against a real MinIO (built by ``make minio``):

- TLS with certificate verification: MinIO serves a certificate from a CA made here (trustme);
  the stages' client and the CLI preflight trust it through ``OCRSTREAM_S3_CA_FILE`` and refuse
  the connection without it (verification is never turned off);
- per-role policies (``deploy/s3/policies/*.json``) applied with MinIO's admin API: each role can
  do its job, and is refused what another role does.
"""

from __future__ import annotations

import json

import pytest
import urllib3
from pydantic import SecretStr

from ocrstream.errors import OcrstreamError
from ocrstream.preflight import ExitCode, PreflightError, check_store
from ocrstream.storage import ObjectStore

from conftest import REPO, make_pdf, run_minio

pytestmark = pytest.mark.integration

POLICIES = REPO / "deploy" / "s3" / "policies"
ROOT_USER, ROOT_PASSWORD = "ocrstream", "ocrstream-secret"


@pytest.fixture
def tls_minio(settings, tmp_path):
    """MinIO over TLS (certificate for 127.0.0.1 signed by a test CA); yields ``(settings, ca_file)``."""
    import trustme

    ca = trustme.CA(organization_name="ocrstream-s3-test-ca")
    leaf = ca.issue_cert("127.0.0.1")
    certs = tmp_path / "certs"
    certs.mkdir()
    leaf.private_key_pem.write_to_path(str(certs / "private.key"))
    (certs / "public.crt").write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with run_minio(settings, tmp_path, args=("--certs-dir", str(certs)), s3_secure=True, s3_ca_file=str(ca_file),
                   s3_access_key=SecretStr(ROOT_USER), s3_secret_key=SecretStr(ROOT_PASSWORD)) as s:
        yield s, ca_file


def test_tls_with_a_private_ca_is_verified(tls_minio):
    s, ca_file = tls_minio
    store = ObjectStore(s)
    data = make_pdf([["OVER TLS"]])
    info = store.put_bytes("uploads/tls.pdf", data, "application/pdf")
    assert store.get_bytes(s.bucket, "uploads/tls.pdf", 10_000_000, etag=info.etag) == data
    check_store(s)  # the CLI preflight trusts the same CA

    untrusting = s.model_copy(update={"s3_ca_file": None})  # certifi's public CAs only
    with pytest.raises(OcrstreamError) as e:
        ObjectStore(untrusting).get_bytes(s.bucket, "uploads/tls.pdf", 10_000_000)
    assert e.value.code == "storage_error"
    with pytest.raises(PreflightError) as p:
        check_store(untrusting)
    assert p.value.code == ExitCode.STORE_UNREACHABLE and "CERTIFICATE_VERIFY_FAILED" in str(p.value), str(p.value)


def _policy(name: str, bucket: str) -> dict:
    """A shipped policy with the default bucket name replaced by this test's."""
    text = (POLICIES / f"{name}.json").read_text()
    return json.loads(text.replace("arn:aws:s3:::ocrstream", f"arn:aws:s3:::{bucket}"))


def _denied(call) -> bool:
    try:
        call()
    except OcrstreamError as exc:
        assert "AccessDenied" in exc.message and not exc.transient, exc.message
        return True
    return False


def test_each_role_can_do_its_job_and_nothing_else(tls_minio):
    from minio import MinioAdmin
    from minio.credentials import StaticProvider

    s, ca_file = tls_minio
    admin = MinioAdmin(endpoint=s.s3_endpoint, credentials=StaticProvider(ROOT_USER, ROOT_PASSWORD), secure=True,
                       http_client=urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(ca_file)))
    stores = {}
    for role in ("submitter", "splitter", "reader", "watcher", "outbox", "analytics", "gateway"):
        admin.policy_add(f"ocrstream-{role}", policy=_policy(role, s.bucket))
        admin.user_add(f"{role}-user", f"{role}-secret-key")
        admin.policy_set(f"ocrstream-{role}", user=f"{role}-user")
        stores[role] = ObjectStore(s.model_copy(update={"s3_access_key": SecretStr(f"{role}-user"),
                                                        "s3_secret_key": SecretStr(f"{role}-secret-key")}))
    root = ObjectStore(s)
    for key in ("uploads/doc.pdf", "inbox/drop.pdf", "internal/payroll.pdf"):
        root.put_bytes(key, make_pdf([[key]]), "application/pdf")
    sub, reader, watcher = stores["submitter"], stores["reader"], stores["watcher"]

    # submitter: uploads, reads nothing; `ocrstream submit`'s preflight passes with this policy
    check_store(sub.settings)
    sub.put_bytes("uploads/new.pdf", b"%PDF-1.7 new", "application/pdf")
    assert _denied(lambda: sub.get_bytes(s.bucket, "uploads/doc.pdf", 10_000_000))
    assert _denied(lambda: sub.put_bytes("internal/x.pdf", b"x"))
    # splitter and workers: read the allowed sources, write nothing, read nothing else
    assert reader.get_bytes(s.bucket, "uploads/doc.pdf", 10_000_000).startswith(b"%PDF")
    assert reader.get_bytes(s.bucket, "inbox/drop.pdf", 10_000_000).startswith(b"%PDF")
    assert _denied(lambda: reader.get_bytes(s.bucket, "internal/payroll.pdf", 10_000_000))
    assert _denied(lambda: reader.put_bytes("uploads/y.pdf", b"y"))
    # splitter: reads the allowed sources, writes page slices (a missing slice is "not found",
    # which is how it knows to write one) and nothing else; the workers read the slices
    spl = stores["splitter"]
    assert spl.get_bytes(s.bucket, "uploads/doc.pdf", 10_000_000).startswith(b"%PDF")
    with pytest.raises(OcrstreamError) as missing:
        spl.stat(s.bucket, "slices/d1/1.pdf")
    assert missing.value.code == "object_not_found"
    spl.put_bytes("slices/d1/1.pdf", b"%PDF-1.7 slice", "application/pdf")
    assert reader.get_bytes(s.bucket, "slices/d1/1.pdf", 10_000_000).startswith(b"%PDF")
    assert _denied(lambda: spl.put_bytes("uploads/z.pdf", b"z"))
    assert _denied(lambda: reader.put_bytes("slices/d1/2.pdf", b"x"))
    # watcher: lists and stats the drop folder only
    assert [o.key for o in watcher.list("inbox/")] == ["inbox/drop.pdf"]
    assert watcher.stat(s.bucket, "inbox/drop.pdf").size > 0
    assert _denied(lambda: watcher.list("internal/"))
    assert _denied(lambda: watcher.get_bytes(s.bucket, "uploads/doc.pdf", 10_000_000))
    # outbox sink: reads the sources, writes under outbox/, tags or moves inbox objects, nothing else
    out = stores["outbox"]
    assert out.get_bytes(s.bucket, "inbox/drop.pdf", 10_000_000).startswith(b"%PDF")
    out.put_bytes("outbox/drop.pdf.txt", b"text")
    out.remove(s.bucket, "outbox/drop.pdf.txt")
    out.set_tags(s.bucket, "inbox/drop.pdf", {"ocrstream-status": "succeeded"})
    out.copy(s.bucket, "inbox/drop.pdf", "done/drop.pdf")
    assert _denied(lambda: out.put_bytes("uploads/x.pdf", b"x"))
    assert _denied(lambda: out.get_bytes(s.bucket, "internal/payroll.pdf", 10_000_000))
    assert _denied(lambda: out.remove(s.bucket, "uploads/doc.pdf"))
    # analytics sink: its own prefix only
    ana = stores["analytics"]
    ana.put_bytes("analytics/pages/dt=2026-11-24/p000-1-2.parquet", b"PAR1")
    assert [o.key for o in ana.list("analytics/pages/")] == ["analytics/pages/dt=2026-11-24/p000-1-2.parquet"]
    ana.remove(s.bucket, "analytics/pages/dt=2026-11-24/p000-1-2.parquet")
    assert _denied(lambda: ana.get_bytes(s.bucket, "uploads/doc.pdf", 10_000_000))
    assert _denied(lambda: ana.list("inbox/"))
    assert _denied(lambda: ana.put_bytes("outbox/x.txt", b"x"))
    # gateway: uploads like a submitter, and stats (HEAD) what a JSON submission references under
    # the allowed sources, the way Intake.reference does before publishing; its preflight passes
    gw = stores["gateway"]
    check_store(gw.settings)
    gw.put_bytes("uploads/gw/new.pdf", b"%PDF-1.7 gw", "application/pdf")
    assert gw.stat(s.bucket, "uploads/doc.pdf").size > 0
    assert gw.stat(s.bucket, "inbox/drop.pdf").size > 0
    with pytest.raises(OcrstreamError) as gone:  # a missing object is "not found" (a 422), not "denied"
        gw.stat(s.bucket, "uploads/missing.pdf")
    assert gone.value.code == "object_not_found"
    assert _denied(lambda: gw.stat(s.bucket, "internal/payroll.pdf"))
    assert _denied(lambda: gw.put_bytes("inbox/x.pdf", b"x"))  # the drop folder is the watcher's input
    assert _denied(lambda: gw.put_bytes("internal/x.pdf", b"x"))
    assert _denied(lambda: gw.remove(s.bucket, "uploads/doc.pdf"))
    assert _denied(lambda: gw.list("inbox/"))
