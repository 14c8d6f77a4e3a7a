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
    where = s.kafka_bootstrap_servers
    try:
        admin = AdminClient({**common_config(s), "logger": PREFLIGHT_CLIENT_LOG, "error_cb": errors.append})
    except KafkaException as exc:  # refused by the client itself: a setting (e.g. a missing CA file)
        raise PreflightError(ExitCode.BAD_SETTING, f"the Kafka client refused the settings: {exc.args[0].str()}. "
                                                   "Check the OCRSTREAM_KAFKA_* variables") from None
    start = time.monotonic()
    metadata = None
    while True:
        try:
            metadata = admin.list_topics(timeout=1.0)
        except KafkaException as exc:
            errors.append(exc.args[0])
        admin.poll(0)
        if metadata is not None:
            break  # answered: errors from other brokers of a cluster do not fail the command
        codes = {e.code() for e in errors}
        elapsed = time.monotonic() - start
        if codes & _AUTH:
            raise _refused(s, next(e for e in errors if e.code() in _AUTH))
        if KafkaError._SSL in codes:
            err = next(e for e in errors if e.code() == KafkaError._SSL)
            raise PreflightError(ExitCode.KAFKA_REFUSED,
                                 f"TLS handshake with Kafka broker {where} failed: {_reason(err)}. Check "
                                 "OCRSTREAM_KAFKA_SECURITY_PROTOCOL and OCRSTREAM_KAFKA_SSL_CA_LOCATION")
        if elapsed >= timeout_s or (elapsed >= 3 and KafkaError._ALL_BROKERS_DOWN in codes):
            reason = _reason(errors[-1]) if errors else "no answer"
            raise PreflightError(ExitCode.KAFKA_UNREACHABLE,
                                 f"no Kafka broker answered at {where} ({reason}). Start the local stack with "
                                 "`ocrstream stack up`, or set OCRSTREAM_KAFKA_BOOTSTRAP_SERVERS to your brokers")
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is not None and meta.error is not None and meta.error.code() in _AUTH:
            raise _refused(s, meta.error, f" access to topic {topic}")
        if meta is None or meta.error is not None:
            raise PreflightError(ExitCode.TOPIC_MISSING,
                                 f"topic {topic} does not exist on {where}. Create the topics with "
                                 f"`ocrstream topics apply` (topic prefix OCRSTREAM_TOPIC_PREFIX={s.topic_prefix!r})")


def _refused(s: Settings, err: KafkaError, what: str = " the credentials") -> PreflightError:
    user = f" (user {s.kafka_sasl_username!r}, {s.kafka_sasl_mechanism})" if s.kafka_sasl_username else ""
    return PreflightError(ExitCode.KAFKA_REFUSED,
                          f"Kafka broker {s.kafka_bootstrap_servers} refused{what}{user}: {_reason(err)}. Check "
                          "OCRSTREAM_KAFKA_SASL_USERNAME, OCRSTREAM_KAFKA_SASL_PASSWORD and "
                          "OCRSTREAM_KAFKA_SASL_MECHANISM (and the principal's ACLs)")


def _reason(err: KafkaError) -> str:
    """librdkafka's message without its broker prefix, e.g. ``Connection refused``."""
    text = err.str()
    for marker in ("failed: ", "error: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return text.split(" (after ")[0].strip().rstrip(".")


def check_store(s: Settings, bucket: str | None = None) -> None:
    """The S3 endpoint answers, accepts the credentials, and ``bucket`` (default: the
    configured one) exists: one listing of the upload prefix, no retries, 5 s connect timeout.

    Raises:
        PreflightError: ``STORE_UNREACHABLE``, ``STORE_REFUSED`` or ``BUCKET_MISSING``.
    """
    import urllib3
    from minio import Minio
    from minio.error import MinioException, S3Error

    from .errors import OcrstreamError
    from .storage import http_client, validate_bucket

    bucket = bucket or s.bucket
    try:
        validate_bucket(bucket)
    except OcrstreamError as exc:
        raise PreflightError(ExitCode.BAD_SETTING, f"{exc.message}. Check OCRSTREAM_BUCKET") from None
    where = f"{'https' if s.s3_secure else 'http'}://{s.s3_endpoint}"
    # The stages' TLS settings (CA file), but one try and short timeouts.
    client = Minio(s.s3_endpoint, access_key=s.s3_access_key.get_secret_value(),
                   secret_key=s.s3_secret_key.get_secret_value(), secure=s.s3_secure, region=s.s3_region,
                   http_client=http_client(s, retries=False, connect_s=5, read_s=10))
    try:
        # A listing of the upload prefix, not HEAD bucket: a least-privilege submitter may list only
        # there (deploy/s3/policies/submitter.json), and an error body tells bad credentials
        # (InvalidAccessKeyId, SignatureDoesNotMatch) from a missing bucket (NoSuchBucket).
        next(iter(client.list_objects(bucket, prefix=s.upload_prefix)), None)
    except S3Error as exc:
        if exc.code == "NoSuchBucket":
            raise PreflightError(ExitCode.BUCKET_MISSING,
                                 f"bucket {bucket!r} does not exist on {where}. Create it (`ocrstream stack up` "
                                 "creates the local one) or set OCRSTREAM_BUCKET") from None
        if exc.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden"):
            raise PreflightError(ExitCode.STORE_REFUSED,
                                 f"object store {where} refused access ({exc.code}). Check OCRSTREAM_S3_ACCESS_KEY "
                                 "and OCRSTREAM_S3_SECRET_KEY, and that this role's S3 policy lets it list "
                                 f"{s.upload_prefix} (deploy/s3/policies/submitter.json)") from None
        raise PreflightError(ExitCode.STORE_UNREACHABLE, f"object store {where} answered {exc.code}: {exc.message}. "
                                                         "Check OCRSTREAM_S3_ENDPOINT") from None
    except MinioException as exc:  # a 5xx, or an answer that is not S3 (a proxy, a web server)
        raise PreflightError(ExitCode.STORE_UNREACHABLE,
                             f"object store {where} did not answer as S3 ({type(exc).__name__}). Check "
                             "OCRSTREAM_S3_ENDPOINT") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise PreflightError(ExitCode.STORE_UNREACHABLE,
                             f"object store {where} unreachable ({_root_cause(exc)}). Start the local stack with "
                             "`ocrstream stack up`, or set OCRSTREAM_S3_ENDPOINT (and OCRSTREAM_S3_SECURE, "
                             "OCRSTREAM_S3_CA_FILE for TLS)") from None


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a urllib3 error, e.g. ``Connection refused``."""
    inner = getattr(exc, "reason", None) or exc.__cause__ or exc.__context__
    if isinstance(inner, BaseException) and inner is not exc:
        return _root_cause(inner)
    if isinstance(inner, str) and inner:  # ssl.SSLError.reason, e.g. WRONG_VERSION_NUMBER
        return inner
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
        check_source(s, s.bucket, f"{s.upload_prefix}probe", s.tenant)
    except OcrstreamError as exc:
        raise PreflightError(ExitCode.BAD_SETTING,
                             f"uploads go to s3://{s.bucket}/{s.upload_prefix}, which the service may not read: "
                             f"{exc.message}. Add it to OCRSTREAM_ALLOWED_SOURCES or change "
                             "OCRSTREAM_BUCKET / OCRSTREAM_UPLOAD_PREFIX") from None
