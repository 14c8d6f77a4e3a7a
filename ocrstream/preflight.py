"""What a CLI command checks before its work, so an expected failure is one line.

A broker or object store that cannot be reached, credentials they refuse, a topic or bucket
that does not exist, a missing input file or a bad setting value each end the command with
one line on stderr (what failed, where, what to do) and an exit code of its own
(:class:`ExitCode`), instead of a traceback among raw client log lines. ``--debug`` (or
``OCRSTREAM_LOG_LEVEL=DEBUG``) shows the traceback and the clients' own log lines.

Long-running stages do not use this: they wait for a broker that is away (librdkafka
reconnects) and their supervisor restarts them on fatal errors.
"""

from __future__ import annotations

import logging
import time
from enum import IntEnum

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from .settings import Settings

# The preflight's own clients log through this logger, silenced unless debugging: their
# failure is reported as the one line.
PREFLIGHT_CLIENT_LOG = logging.getLogger("ocrstream.preflight.librdkafka")


class ExitCode(IntEnum):
    """Exit status of the ``ocrstream`` CLI commands (stages: 0, 2 fatal Kafka error, 3 engine stuck)."""

    OK = 0
    FAILED = 1  #: the command ran and reports a failure (failed documents, topic drift with --strict)
    TIMEOUT = 2  #: ``submit --wait --timeout`` elapsed (argparse also exits 2 on usage errors)
    BAD_SETTING = 10  #: an OCRSTREAM_* variable has an invalid value
    KAFKA_UNREACHABLE = 11  #: no broker answered at OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS
    KAFKA_REFUSED = 12  #: the broker refused the credentials or the TLS handshake failed
    TOPIC_MISSING = 13  #: a topic the command needs does not exist
    STORE_UNREACHABLE = 14  #: the S3 endpoint did not answer
    STORE_REFUSED = 15  #: the S3 endpoint refused the credentials
    BUCKET_MISSING = 16  #: the configured bucket does not exist
    NO_INPUT = 17  #: an input file does not exist or cannot be read


class PreflightError(Exception):
    """An expected failure: ``str(exc)`` is the one line to print, ``code`` the exit status."""

    def __init__(self, code: ExitCode, message: str):
        super().__init__(message)
        self.code = code


_AUTH = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
         KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED}


def check_kafka(s: Settings, topics: list[str] | tuple[str, ...] = (), timeout_s: float = 10.0,
                quiet: bool = True) -> None:
    """The brokers answer with these settings and ``topics`` (full names) exist.

    Gives up early on refused credentials or a failed TLS handshake, and once every broker
    has been down for 3 s (a broker restarting within that is not reported).

    Raises:
        PreflightError: ``KAFKA_UNREACHABLE``, ``KAFKA_REFUSED`` or ``TOPIC_MISSING``.
    """
    from .kafka import common_config

    PREFLIGHT_CLIENT_LOG.setLevel(logging.CRITICAL if quiet else logging.DEBUG)
    errors: list[KafkaError] = []
    admin = AdminClient({**common_config(s), "logger": PREFLIGHT_CLIENT_LOG, "error_cb": errors.append})
    where = s.kafka_bootstrap_servers
    start = time.monotonic()
    metadata = None
    while metadata is None:
        try:
            metadata = admin.list_topics(timeout=1.0)
        except KafkaException as exc:
            errors.append(exc.args[0])
        admin.poll(0)
        codes = {e.code() for e in errors}
        elapsed = time.monotonic() - start
        if codes & _AUTH:
            err = next(e for e in errors if e.code() in _AUTH)
            user = f" (user {s.kafka_sasl_username!r}, {s.kafka_sasl_mechanism})" if s.kafka_sasl_username else ""
            raise PreflightError(ExitCode.KAFKA_REFUSED,
                                 f"Kafka broker {where} refused the credentials{user}: {_reason(err)}. Check "
                                 "OCRSTREAM_KAFKA_SASL_USERNAME, OCRSTREAM_KAFKA_SASL_PASSWORD and "
                                 "OCRSTREAM_KAFKA_SASL_MECHANISM")
        if KafkaError._SSL in codes:
            err = next(e for e in errors if e.code() == KafkaError._SSL)
            raise PreflightError(ExitCode.KAFKA_REFUSED,
                                 f"TLS handshake with Kafka broker {where} failed: {_reason(err)}. Check "
                                 "OCRSTREAM_KAFKA_SECURITY_PROTOCOL and OCRSTREAM_KAFKA_SSL_CA_LOCATION")
        if metadata is None and (elapsed >= timeout_s or (elapsed >= 3 and KafkaError._ALL_BROKERS_DOWN in codes)):
            reason = _reason(errors[-1]) if errors else "no answer"
            raise PreflightError(ExitCode.KAFKA_UNREACHABLE,
                                 f"no Kafka broker answered at {where} ({reason}). Start the local stack with "
                                 "`ocrstream stack up`, or set OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS to your brokers")
    missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error is not None]
    if missing:
        raise PreflightError(ExitCode.TOPIC_MISSING,
                             f"topic(s) {', '.join(missing)} do not exist on {where}. Create them with "
                             f"`ocrstream topics apply` (topic prefix OCRSTREAM_TOPIC_PREFIX={s.topic_prefix!r})")


def _reason(err: KafkaError) -> str:
    """librdkafka's message without its broker prefix, e.g. ``Connection refused``."""
    text = err.str()
    for marker in ("failed: ", "error: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return text.split(" (after ")[0].strip().rstrip(".")


def check_store(s: Settings, bucket: str | None = None) -> None:
    """The S3 endpoint answers, accepts the credentials, and ``bucket`` (default: the
    configured one) exists. One request, no retries, 5 s connect timeout.

    Raises:
        PreflightError: ``STORE_UNREACHABLE``, ``STORE_REFUSED`` or ``BUCKET_MISSING``.
    """
    import urllib3
    from minio import Minio
    from minio.error import S3Error

    from .errors import OcrstreamError
    from .storage import validate_bucket

    bucket = bucket or s.bucket
    try:
        validate_bucket(bucket)
    except OcrstreamError as exc:
        raise PreflightError(ExitCode.BAD_SETTING, f"{exc.message}. Check OCRSTREAM_BUCKET") from None
    where = f"{'https' if s.s3_secure else 'http'}://{s.s3_endpoint}"
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=10))
    client = Minio(s.s3_endpoint, access_key=s.s3_access_key.get_secret_value(),
                   secret_key=s.s3_secret_key.get_secret_value(), secure=s.s3_secure, region=s.s3_region,
                   http_client=http)
    try:
        exists = client.bucket_exists(bucket)
    except S3Error as exc:
        if exc.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden"):
            raise PreflightError(ExitCode.STORE_REFUSED,
                                 f"object store {where} refused the credentials ({exc.code}). Check "
                                 "OCRSTREAM_S3_ACCESS_KEY and OCRSTREAM_S3_SECRET_KEY") from None
        raise PreflightError(ExitCode.STORE_UNREACHABLE, f"object store {where} answered {exc.code}: {exc.message}. "
                                                         "Check OCRSTREAM_S3_ENDPOINT") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise PreflightError(ExitCode.STORE_UNREACHABLE,
                             f"object store {where} unreachable ({_root_cause(exc)}). Start the local stack with "
                             "`ocrstream stack up`, or set OCRSTREAM_S3_ENDPOINT (and OCRSTREAM_S3_SECURE)") from None
    if not exists:
        raise PreflightError(ExitCode.BUCKET_MISSING,
                             f"bucket {bucket!r} does not exist on {where}. Create it (`ocrstream stack up` creates "
                             "the local one) or set OCRSTREAM_BUCKET")


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a urllib3 error, e.g. ``Connection refused``."""
    inner = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
    if inner is not None and inner is not exc:
        return _root_cause(inner)
    text = str(exc)
    if "Errno" in text and "]" in text:
        text = text.split("]", 1)[1]
    return text.strip() or type(exc).__name__


def check_uploads_allowed(s: Settings) -> None:
    """``ocrstream submit`` uploads under ``OCRSTREAM_UPLOAD_PREFIX``: refuse to upload what the
    splitter would then refuse (``forbidden_source``) because the allowed sources exclude it.

    Raises:
        PreflightError: ``BAD_SETTING``.
    """
    from .errors import OcrstreamError
    from .sources import check_source

    try:
        check_source(s, s.bucket, f"{s.upload_prefix}probe")
    except OcrstreamError as exc:
        raise PreflightError(ExitCode.BAD_SETTING,
                             f"uploads go to s3://{s.bucket}/{s.upload_prefix}, which the service may not read: "
                             f"{exc.message}. Add it to OCRSTREAM_ALLOWED_SOURCES or change "
                             "OCRSTREAM_BUCKET / OCRSTREAM_UPLOAD_PREFIX") from None
