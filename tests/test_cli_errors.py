"""Expected failures of the CLI, through the real ``ocrstream`` command (a subprocess): one line
on stderr that names what failed, where and what to do; an exit code of its own
(:class:`ocrstream.preflight.ExitCode`); no traceback and no raw librdkafka lines
(``%3|...|FAIL|``) unless ``--debug``.

The broker and object store are the test session's real ones; "down" is a closed port.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from ocrstream.preflight import ExitCode

from conftest import REPO, make_pdf, settings_env

pytestmark = pytest.mark.integration


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ocrstream(s, *args: str, timeout_s: float = 60, **env: str) -> subprocess.CompletedProcess:
    """Run the real CLI (``python -m ocrstream.cli ARGS``) with ``s`` plus ``env`` as its environment."""
    return subprocess.run([sys.executable, "-m", "ocrstream.cli", *args], env=settings_env(s, **env), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout_s)


def one_line(proc: subprocess.CompletedProcess, code: ExitCode, *needles: str) -> str:
    """The command failed with ``code`` and exactly one stderr line containing every needle."""
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err and "|FAIL|" not in err, err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture
def pdf(tmp_path):
    """A one-page born-digital PDF to submit."""
    path = tmp_path / "scan.pdf"
    path.write_bytes(make_pdf([["HELLO"]]))
    return path


def test_broker_down(settings, pdf):
    address = f"127.0.0.1:{closed_port()}"
    proc = ocrstream(settings, "submit", "--wait", str(pdf), OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS=address)
    one_line(proc, ExitCode.KAFKA_UNREACHABLE, address, "ocrstream stack up", "OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS")
    assert proc.stdout == ""
    for cmd in (["topics", "apply"], ["dlq", "list"], ["top", "--once"]):
        one_line(ocrstream(settings, *cmd, OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS=address),
                 ExitCode.KAFKA_UNREACHABLE, address)


def test_debug_shows_the_traceback(settings, pdf):
    address = f"127.0.0.1:{closed_port()}"
    proc = ocrstream(settings, "--debug", "submit", str(pdf), OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS=address)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "PreflightError" in proc.stderr
    # librdkafka's own lines arrive through Python logging, not as raw %3|...| lines
    assert "ocrstream.preflight.librdkafka" in proc.stderr and "|FAIL|" not in proc.stderr


def test_object_store_down(settings, pdf):
    endpoint = f"127.0.0.1:{closed_port()}"
    proc = ocrstream(settings, "submit", str(pdf), OCRSTREAM_S3_ENDPOINT=endpoint)
    one_line(proc, ExitCode.STORE_UNREACHABLE, endpoint, "ocrstream stack up", "OCRSTREAM_S3_ENDPOINT")


def test_wrong_object_store_credentials(settings, pdf):
    proc = ocrstream(settings, "submit", str(pdf), OCRSTREAM_S3_SECRET_KEY="not-the-secret")
    err = one_line(proc, ExitCode.STORE_REFUSED, settings.s3_endpoint, "OCRSTREAM_S3_SECRET_KEY")
    assert "not-the-secret" not in err


def test_missing_bucket(settings, pdf):
    proc = ocrstream(settings, "submit", str(pdf), OCRSTREAM_BUCKET="no-such-bucket-here")
    one_line(proc, ExitCode.BUCKET_MISSING, "no-such-bucket-here", "OCRSTREAM_BUCKET")


def test_missing_topic(settings, pdf):
    proc = ocrstream(settings, "submit", str(pdf), OCRSTREAM_TOPIC_PREFIX="never-applied.")
    one_line(proc, ExitCode.TOPIC_MISSING, "never-applied.ingest", "ocrstream topics apply")


def test_missing_file(settings, tmp_path):
    proc = ocrstream(settings, "submit", str(tmp_path / "nope.pdf"))
    one_line(proc, ExitCode.NO_INPUT, "nope.pdf")


def test_bad_setting_value(settings, pdf):
    proc = ocrstream(settings, "submit", str(pdf), OCRSTREAM_BATCH_MAX_PAGES="many")
    one_line(proc, ExitCode.BAD_SETTING, "OCRSTREAM_BATCH_MAX_PAGES='many'", "integer")


def test_a_good_submission_still_works(settings, pdf):
    """The preflight passes on a healthy stack: the reference is published (no stage runs here)."""
    proc = ocrstream(settings, "submit", "--json", str(pdf))
    assert proc.returncode == 0, proc.stderr
    assert '"document_id"' in proc.stdout


def test_uploads_outside_the_allowed_sources(settings, pdf):
    """Uploading where the splitter may not read would only produce forbidden_source failures."""
    proc = ocrstream(settings, "submit", str(pdf), OCRSTREAM_ALLOWED_SOURCES=f"{settings.bucket}/inbox/")
    one_line(proc, ExitCode.BAD_SETTING, "OCRSTREAM_ALLOWED_SOURCES", f"s3://{settings.bucket}/uploads/")
